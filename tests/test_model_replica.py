"""The replica class in this process (no Serve): states, request out-of-memory, health.

The one double is at the hardware boundary: generation that raises CUDA's
out-of-memory error, which a CPU cannot produce on demand.
"""

import pytest
import torch

from deployments.config import load_app_config
from deployments.model_replica import ModelReplica, ReplicaUnavailableError, RequestOutOfMemoryError
from models.base import ChatMessage, GenerationRequest, TextPart
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
    def make(**cpu_group) -> ModelReplica:
        replica = ModelReplica(load_app_config({"cpu_group": cpu_group}), "cpu")
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
