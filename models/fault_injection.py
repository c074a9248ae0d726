"""Out-of-memory drills without a GPU: make generation raise CUDA's out-of-memory error above a size.

Off unless ``VIDEO_DETECTIVE_SIMULATE_OOM_ABOVE_PIXELS`` is set (through a group's ``env_vars``). Then
a generation whose media holds more pixels than that (all frames and images together) raises
``torch.OutOfMemoryError`` at the generate boundary, exactly where a real one surfaces, so the
replica's cleanup, smaller retries and hand-off to the other group run as they would on a full GPU.
"""

import os

import torch

from models.request_shrink import media_pixels
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
