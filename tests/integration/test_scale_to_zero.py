"""A GPU group with ``min_replicas: 0`` through real Serve and HTTP: asleep at rest (``idle``, not down), woken by
the first call while the CPU group answers, serving once loaded, and back to zero after the downscale delay,
with every request answered meanwhile.

The GPU group runs its chain on the CPU (``device: cpu``) on a logical GPU, against a probe file that reports an
8 GiB GPU, all free.
"""

import concurrent.futures
import logging
import threading
import time

import httpx
import pytest
from polling import wait_for_condition
from ray import serve

from integration.conftest import deploy
from memory.probe import FileGpu

pytestmark = pytest.mark.integration

GIB = 1024**3
APP = "scale-to-zero"
logger = logging.getLogger(__name__)
_REQUEST = {"messages": [{"role": "user", "content": "Describe the scene."}], "max_tokens": 8, "temperature": 0}


@pytest.fixture(scope="module")
def idle_url(http_port, test_root):
    probe = test_root / "gpu-probe-scale-to-zero.json"
    FileGpu.write(probe, total_bytes=8 * GIB, free_bytes=8 * GIB)
    args = {
        "gpu_group": {
            "device": "cpu", "num_cpus": 0.5, "num_gpus": 0.5, "chain": ["bf16"],
            "env_vars": {"VIDEO_DETECTIVE_GPU_PROBE_FILE": str(probe)},
            "autoscaling": {"min_replicas": 0, "max_replicas": 1, "target_ongoing_requests": 1,
                            "upscale_delay_s": 0, "downscale_delay_s": 3, "look_back_period_s": 11},
        },
        "cpu_group": {"num_cpus": 0.5},
        "routing": {"gpu_timeout_s": 30, "breaker_cooldown_s": 30},
        "ingress": {"readiness_cache_s": 0},
    }
    url = deploy(args, http_port, name=APP, route_prefix="/idle")
    # The CPU group's replica loads after /healthz answers: ready once it has.
    wait_for_condition(lambda: httpx.get(f"{url}/readyz", timeout=30).json()["status"] == "ready", timeout_s=120)
    yield url
    serve.delete(APP)


def _gpu_status(url: str) -> str:
    return httpx.get(f"{url}/readyz", timeout=30).json()["groups"]["gpu"]["status"]


def test_at_rest_the_gpu_group_is_idle_and_the_app_ready(idle_url):
    readyz = httpx.get(f"{idle_url}/readyz", timeout=30).json()

    assert readyz["status"] == "ready"
    assert readyz["groups"]["gpu"] == {"ready_replicas": 0, "replicas": 0, "status": "idle", "reasons": []}
    assert readyz["breakers"] == {"gpu": "closed"}


def test_from_zero_under_load_to_a_gpu_answer_and_back_to_zero_with_every_request_answered(idle_url):
    answers: list[tuple[int, str | None, float]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=idle_url, timeout=120) as http:
            while not stop.is_set():
                response = http.post("/v1/chat/completions", json=_REQUEST)
                answers.append((response.status_code, response.headers.get("x-served-by-group"), time.monotonic()))

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        clients = [pool.submit(client) for _ in range(4)]
        try:
            wait_for_condition(lambda: any(group == "gpu" for _, group, _ in answers), timeout_s=180)
        finally:
            stop.set()
        for future in clients:
            future.result()

    first_gpu_s = min(at for _, group, at in answers if group == "gpu") - started
    assert {status for status, _, _ in answers} == {200}, f"{len(answers)} answers"
    assert answers[0][1] == "cpu"  # the first call found the GPU group asleep and was answered meanwhile
    assert first_gpu_s < 180

    stopped = time.monotonic()
    wait_for_condition(lambda: _gpu_status(idle_url) == "idle", timeout_s=120, interval_s=1)  # the downscale delay, then zero
    logger.info("Scale from zero: first GPU answer %.1f s after the first request (%d answers, %d from the GPU group); "
                "idle again %.1f s after the traffic stopped", first_gpu_s, len(answers),
                sum(group == "gpu" for _, group, _ in answers), time.monotonic() - stopped)
    memory = httpx.get(f"{idle_url}/v1/memory", timeout=30).json()
    assert memory["groups"]["gpu"] == [] and memory["breakers"] == {"gpu": "closed"}
