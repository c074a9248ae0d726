"""Out of memory at request time on a real GPU. CPU twin: tests/test_model_replica.py (simulated error).

The GPU replica's memory is capped with ``set_per_process_memory_fraction`` just above the loaded
tiny model, so a long, large video makes generation raise a real ``torch.OutOfMemoryError``; the
replica cleans up, retries with fewer and smaller frames, and answers or hands the request off.
"""

import asyncio

import numpy as np
import pytest
import torch
from polling import wait_for_condition

from deployments.config.app_config import load_app_config
from deployments.plan import resolve_app
from deployments.replica.model_replica import ModelReplica
from models.errors import RequestOutOfMemoryError
from models.requests import ChatMessage, GenerationRequest, TextPart, VideoPart

pytestmark = pytest.mark.gpu


def _video_request(frames: int, side: int) -> GenerationRequest:
    pixels = np.random.default_rng(0).integers(0, 256, size=(frames, side, side, 3), dtype=np.uint8)
    video = VideoPart(frames=pixels, timestamps_s=tuple(float(i) for i in range(frames)))
    return GenerationRequest(messages=(ChatMessage("user", (video, TextPart("What is it?"))),), max_new_tokens=2)


def test_a_real_out_of_memory_is_retried_smaller_and_the_replica_serves_on():
    config = load_app_config(
        {
            "limits": {"max_pixels_per_frame": 1024 * 1024, "max_video_frames": 64, "max_prompt_tokens": 10**6},
            "request_oom": {"min_frames": 2, "min_pixels_per_frame": 128 * 128},
            "gpu_group": {"num_gpus": 1.0, "chain": ["bf16"]},
        }
    )
    replica = ModelReplica(resolve_app(config), "gpu")
    try:
        wait_for_condition(lambda: replica.describe()["state"] == "ready", timeout_s=120)
        # Leave about 1 GiB above what the model holds: 64 frames of 1024x1024 need far more.
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_allocated() + 2**30) / total))

        try:
            answer = asyncio.run(replica.generate(_video_request(64, 1024)))
        except RequestOutOfMemoryError as error:
            pytest.fail(f"the floor should fit in 1 GiB: {error}")

        assert answer.oom_retries, "expected at least one real out-of-memory"
        assert answer.used.video_frames < 64
        assert replica.describe()["state"] == "ready"
        assert asyncio.run(replica.generate(_video_request(2, 128))).oom_retries == ()
        replica.check_health()
    finally:
        replica.close()
