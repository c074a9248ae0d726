"""Drills without the faulty hardware or library: generation that fails where a real failure surfaces.

- ``VIDEO_DETECTIVE_SIMULATE_OOM_ABOVE_PIXELS``: a generation whose media holds more pixels than that (all frames
  and images together) raises ``torch.OutOfMemoryError`` at the generate boundary, exactly where a real one
  surfaces, so the replica's cleanup, smaller retries and hand-off to the other group run as on a full GPU.
- ``VIDEO_DETECTIVE_SIMULATE_BROKEN_LINKS`` (link names, comma-separated: ``fp32,vllm-fp32``): every generation
  on those links raises the error a transformers version its code does not know raised (the transformers engine
  under vLLM's transformers 5.19: ``AttributeError ... no attribute 'cache'``), at the same boundary. The link
  loads; it cannot answer, so its warm-up fails and the chain hands over.

Both are off unless set (through a group's ``env_vars``).
"""

import os

import torch

from models.media.request_shrink import media_pixels
from models.requests import GenerationRequest

SIMULATE_OOM_ABOVE_PIXELS_ENV = "VIDEO_DETECTIVE_SIMULATE_OOM_ABOVE_PIXELS"


def raise_if_simulated_out_of_memory(request: GenerationRequest) -> None:
    threshold = os.environ.get(SIMULATE_OOM_ABOVE_PIXELS_ENV)
    if not threshold:
        return
    pixels = media_pixels(request)
    if pixels > int(threshold):
        raise torch.OutOfMemoryError(
            f"CUDA out of memory (simulated by {SIMULATE_OOM_ABOVE_PIXELS_ENV}={threshold}: "
            f"this request's media has {pixels} pixels)"
        )


SIMULATE_BROKEN_LINKS_ENV = "VIDEO_DETECTIVE_SIMULATE_BROKEN_LINKS"


def raise_if_simulated_broken_link(link: str) -> None:
    broken = {name.strip() for name in os.environ.get(SIMULATE_BROKEN_LINKS_ENV, "").split(",") if name.strip()}
    if link in broken:
        raise AttributeError(
            f"'CausalLMOutputWithPast' object has no attribute 'cache' (simulated by {SIMULATE_BROKEN_LINKS_ENV}: "
            f"link {link} cannot generate)"
        )
