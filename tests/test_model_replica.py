"""The replica class in this process (no Serve): states, request out-of-memory, health.

The one double is at the hardware boundary: generation that raises CUDA's
out-of-memory error, which a CPU cannot produce on demand.
"""

import asyncio

import numpy as np
import pytest
import torch

from deployments.config import load_app_config
from deployments.model_replica import (
    ModelReplica,
    ReplicaUnavailableError,
    RequestOutOfMemoryError,
    StreamOpened,
    StreamOutOfMemoryError,
)
from memory.fault_injection import SIMULATE_OOM_ABOVE_PIXELS_ENV
from models.base import ChatMessage, GenerationRequest, GenerationResult, TextDelta, TextPart, VideoPart
from polling import wait_for_condition

REQUEST = GenerationRequest(messages=(ChatMessage("user", (TextPart("hi"),)),), max_new_tokens=2)


@pytest.fixture
def replicas():
    """Replicas made by a test; their loader threads are stopped after it."""
    made: list[ModelReplica] = []
    yield made
    for replica in made:
        replica.close()


@pytest.fixture
def ready_cpu_replica(replicas):
    def make(*, request_oom: dict | None = None, **cpu_group) -> ModelReplica:
        replica = ModelReplica(load_app_config({"cpu_group": cpu_group, "request_oom": request_oom or {}}), "cpu")
        replicas.append(replica)
        wait_for_condition(lambda: replica.describe()["state"] == "ready", timeout_s=60)
        return replica

    return make


def test_a_cpu_replica_loads_in_the_background_and_answers(ready_cpu_replica):
    replica = ready_cpu_replica()

    answer = replica.generate(REQUEST)

    assert answer.served_by.group == "cpu"
    assert answer.served_by.precision == "fp32"
    assert answer.result.completion_tokens >= 1


def test_a_gpu_replica_without_a_gpu_waits_for_memory_instead_of_failing(monkeypatch, replicas):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # what no driver looks like here
    replica = ModelReplica(load_app_config({"gpu_group": {"load_retry_period_s": 0.2}}), "gpu")
    replicas.append(replica)
    wait_for_condition(lambda: replica.describe()["load_attempts"] >= 2, timeout_s=60)

    description = replica.describe()
    assert description["state"] == "waiting_for_memory"
    assert "No GPU 0 visible" in description["reason"]
    replica.check_health()  # waiting is not something a restart mends
    with pytest.raises(ReplicaUnavailableError, match="waiting_for_memory"):
        replica.generate(REQUEST)


def _out_of_memory(request):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")


def test_out_of_memory_on_a_request_is_absorbed_and_the_replica_keeps_serving(ready_cpu_replica):
    replica = ready_cpu_replica()
    working_generate = replica._adapter.generate
    replica._adapter.generate = _out_of_memory

    with pytest.raises(RequestOutOfMemoryError, match="ran out of memory with 0 frames and 0 images"):
        replica.generate(REQUEST)

    replica._adapter.generate = working_generate
    assert replica.generate(REQUEST).result.completion_tokens >= 1
    assert replica.describe()["request_out_of_memory"] == 1
    replica.check_health()


def test_recurring_out_of_memory_under_the_headroom_floor_fails_health(ready_cpu_replica):
    replica = ready_cpu_replica(health_min_headroom_bytes=10**15)  # more than any host has
    replica._adapter.generate = _out_of_memory
    for _ in range(2):
        with pytest.raises(RequestOutOfMemoryError):
            replica.generate(REQUEST)
    replica.check_health()  # two are not yet "recurring"

    with pytest.raises(RequestOutOfMemoryError):
        replica.generate(REQUEST)

    with pytest.raises(RuntimeError, match="3 requests ran out of memory within 60 s and headroom is"):
        replica.check_health()


def test_unload_makes_health_fail_and_requests_unavailable(ready_cpu_replica):
    replica = ready_cpu_replica()

    replica.unload()

    with pytest.raises(ReplicaUnavailableError, match="unloaded"):
        replica.generate(REQUEST)
    with pytest.raises(RuntimeError, match="the model is gone"):
        replica.check_health()


def _video_request(frames: int, height: int = 48, width: int = 64) -> GenerationRequest:
    video = VideoPart(frames=np.full((frames, height, width, 3), 90, dtype=np.uint8), timestamps_s=tuple(float(i) for i in range(frames)))
    return GenerationRequest(messages=(ChatMessage("user", (video, TextPart("What is it?"))),), max_new_tokens=2)


def test_out_of_memory_retries_with_half_the_frames_and_pixels_until_it_fits(monkeypatch, ready_cpu_replica):
    # 8 frames of 64x48 = 24576 pixels; generation "runs out of memory" above 5000.
    monkeypatch.setenv(SIMULATE_OOM_ABOVE_PIXELS_ENV, "5000")
    replica = ready_cpu_replica(request_oom={"min_frames": 2, "min_pixels_per_frame": 1000})

    answer = replica.generate(_video_request(8))

    assert [(r.before.video_frames, r.after.video_frames) for r in answer.oom_retries] == [(8, 4), (4, 2)]
    assert answer.oom_retries[0].after.max_pixels_per_frame <= 3072 // 2
    assert answer.used.video_frames * answer.used.max_pixels_per_frame <= 5000
    assert answer.used_timestamps_s == (0.0, 7.0)
    assert answer.result.completion_tokens >= 1
    assert replica.describe()["request_out_of_memory"] == 2
    # The replica serves on, at full size when the request fits.
    assert replica.generate(_video_request(2, 32, 32)).oom_retries == ()


def test_out_of_memory_at_the_floor_hands_the_request_off_with_the_numbers(monkeypatch, ready_cpu_replica):
    monkeypatch.setenv(SIMULATE_OOM_ABOVE_PIXELS_ENV, "1000")
    replica = ready_cpu_replica(request_oom={"min_frames": 2, "min_pixels_per_frame": 1000})

    with pytest.raises(RequestOutOfMemoryError, match=r"ran out of memory with 2 frames .* at the floor of 2 frames and 1000 pixels, after 2 smaller retries"):
        replica.generate(_video_request(8))

    assert replica.describe()["request_out_of_memory"] == 3
    replica.check_health()


def _collect_stream(replica: ModelReplica, request: GenerationRequest) -> list:
    async def collect() -> list:
        return [item async for item in replica.generate_stream(request)]

    return asyncio.run(collect())


def test_a_stream_that_runs_out_of_memory_before_its_first_token_is_retried_smaller(monkeypatch, ready_cpu_replica):
    monkeypatch.setenv(SIMULATE_OOM_ABOVE_PIXELS_ENV, "5000")
    replica = ready_cpu_replica(request_oom={"min_frames": 2, "min_pixels_per_frame": 1000})

    items = _collect_stream(replica, _video_request(8))

    opened, *rest = items
    assert isinstance(opened, StreamOpened)
    assert opened.used.video_frames == 2
    assert isinstance(rest[-1], GenerationResult) and rest[-1].completion_tokens == 2
    assert replica.describe()["request_out_of_memory"] == 2


def test_a_stream_that_runs_out_of_memory_mid_answer_ends_with_an_error_and_is_not_restarted(ready_cpu_replica):
    replica = ready_cpu_replica()
    calls = []

    def stream_then_out_of_memory(request, should_stop):
        calls.append(request)
        yield TextDelta("partial")
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    replica._adapter.stream = stream_then_out_of_memory

    with pytest.raises(StreamOutOfMemoryError, match="mid-answer"):
        _collect_stream(replica, _video_request(8))

    assert len(calls) == 1  # the answer was not started again
