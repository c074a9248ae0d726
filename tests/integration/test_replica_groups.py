"""Two replica groups that never drop a request, on a real Ray instance with a fake GPU.

The fake GPU (``ray.init(num_gpus=1)``) gets GPU-group replicas scheduled; they
find no CUDA. Where a test needs GPU memory figures, a probe file at the
hardware boundary reports them (``VIDEO_DETECTIVE_GPU_PROBE_FILE``), and the
GPU group's chain runs on the CPU (``gpu_group.device: cpu``).
"""

import concurrent.futures
import time

import httpx
import openai
import pytest
import ray
from polling import wait_for_condition
from ray import serve

from integration.conftest import deploy
from memory.probe import FileGpu

pytestmark = pytest.mark.integration

GIB = 1024**3
REQUEST = {"model": "tiny-qwen2-vl", "messages": [{"role": "user", "content": "Who answers?"}], "max_tokens": 2}


def _group_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers["x-served-by-group"]


# -- 1. The GPU group cannot load (no CUDA): the CPU group serves everything. ----------------


def test_without_cuda_fifty_openai_requests_are_all_served_by_the_cpu_group(base_url):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)
    groups = []
    for index in range(50):
        raw = client.chat.completions.with_raw_response.create(
            model="tiny-qwen2-vl", max_tokens=2, messages=[{"role": "user", "content": f"request {index}"}]
        )
        assert raw.parse().usage.completion_tokens >= 1
        groups.append(raw.headers["x-served-by-group"])

    assert groups == ["cpu"] * 50


def test_readyz_is_200_and_degraded_while_only_the_cpu_group_serves(base_url):
    response = httpx.get(f"{base_url}/readyz", timeout=30)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["groups"]["cpu"]["status"] == "up"
    assert body["groups"]["gpu"]["status"] == "down"
    assert any("No GPU 0 visible" in reason for reason in body["groups"]["gpu"]["reasons"])


def test_memory_lists_every_replica_of_both_groups(base_url):
    groups = httpx.get(f"{base_url}/v1/memory", timeout=30).json()["groups"]

    (gpu,) = groups["gpu"]
    (cpu,) = groups["cpu"]
    assert gpu["state"] == "waiting_for_memory"
    assert gpu["load_attempts"] >= 1
    assert cpu["state"] == "ready"
    assert cpu["load_report"]["attempts"][-1]["outcome"] == "loaded"
    for replica in (gpu, cpu):
        assert replica["memory"]["process_rss_bytes"] > 0
        assert replica["allocator"]["requested"] == {"expandable_segments": "True"}


# -- 6, 2, 3, 4: a GPU group whose memory is short, then freed. -------------------------------


@pytest.fixture(scope="module")
def probe_file(test_root):
    path = test_root / "gpu-probe.json"
    FileGpu.write(path, total_bytes=8 * GIB, free_bytes=0)
    return path


@pytest.fixture(scope="module")
def healing_url(http_port, probe_file):
    args = {
        "limits": {"video_frames": 4},
        "gpu_group": {
            "device": "cpu",
            "num_cpus": 0.5,
            "load_retry_period_s": 0.5,
            "health_check_period_s": 1,
            "env_vars": {"VIDEO_DETECTIVE_GPU_PROBE_FILE": str(probe_file)},
            "autoscaling": {
                "min_replicas": 1,
                "max_replicas": 2,
                "target_ongoing_requests": 1,
                "upscale_delay_s": 0,
                "downscale_delay_s": 2,
                "look_back_period_s": 11,
            },
        },
        "cpu_group": {"num_cpus": 1},
        "routing": {"gpu_timeout_s": 10, "breaker_cooldown_s": 1},
    }
    url = deploy(args, http_port, name="healing", route_prefix="/healing")
    yield url
    serve.delete("healing")


def test_memory_short_then_freed_traffic_returns_to_the_gpu_group_without_a_redeploy(healing_url, probe_file):
    with httpx.Client(base_url=healing_url, timeout=60) as client:
        assert _group_of(client.post("/v1/chat/completions", json=REQUEST)) == "cpu"
        gpu = client.get("/v1/memory").json()["groups"]["gpu"][0]
        assert gpu["state"] == "waiting_for_memory"
        assert "No loading strategy fits" in gpu["reason"]

        # Another process exits: the device reports its memory free.
        FileGpu.write(probe_file, total_bytes=8 * GIB, free_bytes=8 * GIB)
        freed_at = time.monotonic()
        served_by = []

        def back_on_gpu() -> bool:
            served_by.append(_group_of(client.post("/v1/chat/completions", json=REQUEST)))
            return served_by[-1] == "gpu"

        wait_for_condition(back_on_gpu, timeout_s=60, interval_s=0.2)
        recovery_s = time.monotonic() - freed_at

    assert set(served_by) <= {"cpu", "gpu"}  # every request answered meanwhile
    assert recovery_s < 30
    readyz = httpx.get(f"{healing_url}/readyz", timeout=30).json()
    assert readyz["status"] == "ready"


def test_while_the_gpu_group_is_healthy_it_answers(healing_url):
    with httpx.Client(base_url=healing_url, timeout=60) as client:
        groups = [_group_of(client.post("/v1/chat/completions", json=REQUEST)) for _ in range(10)]

    assert groups == ["gpu"] * 10


def _gpu_replica_actor_names() -> list[str]:
    return [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if "healing" in actor["name"] and "gpu_group" in actor["name"] and actor["name"].startswith("SERVE_REPLICA")
    ]


def _send_during(client_url: str, count: int, action) -> list[int]:
    """``count`` requests from 4 clients; ``action`` runs once a few have been answered: in the middle of the traffic."""
    answered = []

    def send(_: int) -> int:
        with httpx.Client(base_url=client_url, timeout=60) as client:
            response = client.post("/v1/chat/completions", json=REQUEST)
            if response.status_code != 200:
                print(f"request failed: {response.status_code} {response.text}")
            answered.append(response.status_code)
            return response.status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(send, index) for index in range(count)]
        wait_for_condition(lambda: len(answered) >= 4, timeout_s=60, interval_s=0.01)
        assert len(answered) < count, "every request was answered before the action: it did not come mid-traffic"
        action()
        return [future.result() for future in futures]


def test_a_gpu_replica_killed_in_the_middle_of_traffic_fails_no_request(healing_url):
    name = _gpu_replica_actor_names()[0]  # the autoscaler may have started a second one

    def kill() -> None:
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)

    statuses = _send_during(healing_url, 40, kill)

    assert statuses == [200] * 40
    # Serve starts a new GPU replica, which loads (memory is free) and takes traffic back.
    wait_for_condition(
        lambda: httpx.post(f"{healing_url}/v1/chat/completions", json=REQUEST, timeout=60).headers.get("x-served-by-group") == "gpu",
        timeout_s=90,
        interval_s=0.5,
    )


def test_a_failing_health_check_replaces_the_replica_and_traffic_continues(healing_url):
    # The traffic of the test before may have scaled the group out: with two replicas and a target of one,
    # Serve would not replace the one that fails. Start from one.
    wait_for_condition(lambda: _gpu_replica_count() == 1, timeout_s=90, interval_s=0.5)
    before = {replica["replica"] for replica in httpx.get(f"{healing_url}/v1/memory", timeout=30).json()["groups"]["gpu"]}
    handle = serve.get_deployment_handle("gpu_group", "healing")

    statuses = _send_during(healing_url, 30, lambda: handle.unload.remote().result(timeout_s=30))

    assert statuses == [200] * 30

    def replaced_and_ready() -> bool:
        replicas = httpx.get(f"{healing_url}/v1/memory", timeout=30).json()["groups"]["gpu"]
        return any(r["replica"] not in before and r["state"] == "ready" for r in replicas)

    wait_for_condition(replaced_and_ready, timeout_s=90, interval_s=0.5)


def _gpu_replica_count() -> int:
    deployment = serve.status().applications["healing"].deployments["gpu_group"]
    return sum(deployment.replica_states.values())


def test_a_burst_of_load_scales_the_gpu_group_out_then_back_in(healing_url):
    wait_for_condition(lambda: _gpu_replica_count() == 1, timeout_s=90, interval_s=0.5)
    long_request = {**REQUEST, "max_tokens": 48}
    peak = 1
    deadline = time.monotonic() + 60

    def send(_: int) -> int:
        with httpx.Client(base_url=healing_url, timeout=60) as client:
            return client.post("/v1/chat/completions", json=long_request).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futures = []
        while peak < 2 and time.monotonic() < deadline:  # a bounded burst: stops once scaled out, or at 60 s
            futures += [pool.submit(send, index) for index in range(8)]
            concurrent.futures.wait(futures[-8:])
            peak = max(peak, _gpu_replica_count())
        statuses = [future.result() for future in futures]

    assert peak == 2
    assert set(statuses) == {200}
    wait_for_condition(lambda: _gpu_replica_count() == 1, timeout_s=90, interval_s=0.5)


def test_memory_gauges_and_fallback_counters_reach_prometheus(base_url):
    httpx.post(f"{base_url}/v1/chat/completions", json=REQUEST, timeout=60).raise_for_status()  # a fallback
    port = ray._private.worker.global_worker.node.metrics_export_port
    seen: dict[str, list[str]] = {}

    def exported() -> bool:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        for name in ("vd_fallbacks_total", "vd_process_rss_bytes", "vd_load_attempts_total"):
            seen[name] = [line for line in text.splitlines() if line.startswith(f"ray_{name}{{")]
        cpu_rss = [line for line in seen["vd_process_rss_bytes"] if 'group="cpu"' in line]
        return bool(cpu_rss and seen["vd_fallbacks_total"] and seen["vd_load_attempts_total"])

    wait_for_condition(exported, timeout_s=90, interval_s=2)
    cpu_rss = [line for line in seen["vd_process_rss_bytes"] if 'group="cpu"' in line]
    assert float(cpu_rss[0].rsplit(" ", 1)[1]) > 10 * 1024**2
    assert sum(float(line.rsplit(" ", 1)[1]) for line in seen["vd_fallbacks_total"]) >= 1
    loaded = [line for line in seen["vd_load_attempts_total"] if 'outcome="loaded"' in line and 'group="cpu"' in line]
    assert loaded


def test_a_cpu_group_at_zero_replicas_scales_up_for_the_first_request_and_answers_it(http_port):
    url = deploy(
        {
            "gpu_group": {"enabled": False},
            "cpu_group": {"num_cpus": 0.5, "autoscaling": {"min_replicas": 0, "max_replicas": 1, "upscale_delay_s": 0}},
        },
        http_port,
        name="from-zero",
        route_prefix="/from-zero",
    )
    try:
        assert sum(serve.status().applications["from-zero"].deployments["cpu_group"].replica_states.values()) == 0

        response = httpx.post(f"{url}/v1/chat/completions", json=REQUEST, timeout=300)

        assert _group_of(response) == "cpu"
    finally:
        serve.delete("from-zero")


def test_a_busy_gpu_group_is_told_from_a_broken_one(http_port, test_root):
    """A long answer runs to its end on the GPU group; a request it cannot admit in time goes to the CPU group,
    and the breaker stays closed throughout."""
    probe = test_root / "busy-gpu-probe.json"
    FileGpu.write(probe, total_bytes=8 * GIB, free_bytes=8 * GIB)
    url = deploy(
        {
            "limits": {"max_tokens": 4000},
            "gpu_group": {
                "device": "cpu",
                "num_cpus": 0.5,
                "max_batch_size": 1,
                "max_ongoing_requests": 2,
                "env_vars": {"VIDEO_DETECTIVE_GPU_PROBE_FILE": str(probe)},
            },
            "cpu_group": {"num_cpus": 0.5},
            # Both far below the long answer's length: neither may cut it short.
            "routing": {"gpu_timeout_s": 5, "admission_timeout_s": 0.3, "breaker_cooldown_s": 60},
        },
        http_port,
        name="busy-gpu",
        route_prefix="/busy-gpu",
    )
    try:
        # The ingress learns that a GPU replica runs from Serve's status, polled every 2 s; the replica loads, warms
        # up and starts its grammar compile server first (a loaded machine takes more than a minute for it).
        wait_for_condition(
            lambda: _group_of(httpx.post(f"{url}/v1/chat/completions", json=REQUEST, timeout=60)) == "gpu",
            timeout_s=180,
            interval_s=0.5,
        )
        long_request = {**REQUEST, "max_tokens": 3000}
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            long = pool.submit(httpx.post, f"{url}/v1/chat/completions", json=long_request, timeout=300)
            wait_for_condition(
                lambda: any(
                    (replica.get("batching") or {}).get("running")
                    for replica in httpx.get(f"{url}/v1/memory", timeout=30).json()["groups"]["gpu"]
                ),
                timeout_s=30,
                interval_s=0.05,
            )
            short = httpx.post(f"{url}/v1/chat/completions", json=REQUEST, timeout=60)
            long_response = long.result()

        assert _group_of(short) == "cpu"  # the GPU replica was busy with the long one
        assert _group_of(long_response) == "gpu"  # and that one ran to its end where it started
        assert long_response.json()["usage"]["completion_tokens"] > 100
        readyz = httpx.get(f"{url}/readyz", timeout=30).json()
        assert readyz["gpu_breaker"] == "closed"
        assert _group_of(httpx.post(f"{url}/v1/chat/completions", json=REQUEST, timeout=60)) == "gpu"
    finally:
        serve.delete("busy-gpu")
