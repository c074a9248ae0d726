"""The GPU floor replicas through real Serve and HTTP: under load they start from zero at min_precision,
take the GPU group's overflow, and scale back to zero when the load stops.

The GPU group and its floor replicas run their chains on the CPU (``device: cpu``) against a probe file that
reports an 8 GiB GPU, all free. The GPU group holds one request at a time and queues one more, so a few
concurrent clients make it busy.
"""

import concurrent.futures
import threading

import httpx
import pytest
from polling import wait_for_condition
from ray import serve

from integration.conftest import deploy
from memory.probe import FileGpu

pytestmark = pytest.mark.integration

GIB = 1024**3
APP = "floor"


@pytest.fixture(scope="module")
def floor_url(http_port, test_root):
    probe = test_root / "gpu-probe-floor.json"
    FileGpu.write(probe, total_bytes=8 * GIB, free_bytes=8 * GIB)
    one_at_a_time = {"max_ongoing_requests": 1, "max_batch_size": 1, "max_queued_requests": 1}
    args = {
        "gpu_group": {
            "device": "cpu",
            "num_cpus": 0.5,
            "num_gpus": 0.5,
            "chain": ["bf16", "int8"],
            "min_precision": "int8",
            **one_at_a_time,
            "env_vars": {"VIDEO_DETECTIVE_GPU_PROBE_FILE": str(probe)},
            "autoscaling": {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 1,
                            "upscale_delay_s": 0, "downscale_delay_s": 2, "look_back_period_s": 11},
            "floor": {"max_replicas": 1, "num_gpus": 0.25},
        },
        "cpu_group": {"num_cpus": 0.5, **one_at_a_time, "max_queued_requests": 8},
        "routing": {"gpu_timeout_s": 30, "breaker_cooldown_s": 30},
    }
    url = deploy(args, http_port, name=APP, route_prefix="/floor")
    wait_for_condition(lambda: _served_by(url) == "gpu", timeout_s=120)
    yield url
    serve.delete(APP)


def _served_by(url: str) -> str | None:
    response = httpx.post(f"{url}/v1/chat/completions", json=_REQUEST, timeout=60)
    return response.headers.get("x-served-by-group") if response.status_code == 200 else None


_REQUEST = {"messages": [{"role": "user", "content": "Describe the scene."}], "max_tokens": 48, "temperature": 0}


def test_at_rest_the_floor_replicas_are_idle_and_the_app_is_ready(floor_url):
    readyz = httpx.get(f"{floor_url}/readyz", timeout=30).json()

    assert readyz["status"] == "ready"
    assert readyz["groups"]["gpu_floor"] == {"ready_replicas": 0, "replicas": 0, "status": "idle", "reasons": []}
    assert readyz["breakers"] == {"gpu": "closed", "gpu_floor": "closed"}


def test_under_load_floor_replicas_start_at_the_floor_take_the_overflow_and_leave_after(floor_url):
    statuses: list[int] = []
    groups: list[str | None] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=floor_url, timeout=120) as http:
            while not stop.is_set():
                response = http.post("/v1/chat/completions", json=_REQUEST)
                statuses.append(response.status_code)
                groups.append(response.headers.get("x-served-by-group"))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        clients = [pool.submit(client) for _ in range(4)]
        try:
            wait_for_condition(lambda: groups.count("gpu_floor") >= 5, timeout_s=180)
            memory = httpx.get(f"{floor_url}/v1/memory", timeout=30).json()
        finally:
            stop.set()
        for future in clients:
            future.result()

    assert statuses and set(statuses) == {200}, f"{len(statuses)} answers: {sorted(set(statuses))}"
    assert {"gpu", "gpu_floor"} <= set(groups)
    (gpu,), (floor,) = memory["groups"]["gpu"], memory["groups"]["gpu_floor"]
    assert (gpu["precision"], gpu["gpu_share"]) == ("bf16", 0.5)
    assert (floor["precision"], floor["gpu_share"], floor["state"]) == ("int8", 0.25, "ready")
    assert sum(memory["floor_spills_by_reason"].values()) >= 5
    assert all(reason.startswith("busy") for reason in memory["floor_spills_by_reason"])
    assert memory["breakers"] == {"gpu": "closed", "gpu_floor": "closed"}

    # No load: the floor replica goes, the GPU group stays.
    def floor_gone() -> bool:
        return httpx.get(f"{floor_url}/readyz", timeout=30).json()["groups"]["gpu_floor"]["status"] == "idle"

    wait_for_condition(floor_gone, timeout_s=120)
    assert _served_by(floor_url) == "gpu"
