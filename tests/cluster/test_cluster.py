"""video-detective on a real multi-node Ray cluster, deployed with ``serve deploy``.

Three ``ray start`` processes on this machine, each in a network namespace of its own (its own IP, a
Serve proxy on its own port 8000): a head with 1 CPU, a GPU worker declaring one logical GPU (the GPU
group's chain runs on the CPU against a probe file) and a CPU worker labelled ``vd-node=cpu``. Traffic
goes through the nodes' proxies over real HTTP; the GPU worker is lost by stopping its ``ray start`` (by
pid) and comes back; a changed config is rolled out with ``serve deploy`` under traffic.
"""

import time

import httpx
import pytest
from polling import wait_for_condition

from bench.local_cluster import LocalCluster, SteadyTraffic, cluster_serve_config, namespaces_unavailable, write_config
from memory.probe import FileGpu

GIB = 1024**3
APP = "video-detective"
REQUEST = {"messages": [{"role": "user", "content": "Who answers?"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def cluster(test_root, tiny_model_path):
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(f"No multi-node cluster on this machine: {reason}")
    folder = test_root / "cl"
    with LocalCluster(folder) as cluster:  # its nodes inherit VIDEO_DETECTIVE_CACHE: the model built once
        cluster.start_head(num_cpus=1, labels={"vd-node": "head"})
        cluster.add_node("gpu-worker", num_cpus=1, num_gpus=1, labels={"vd-node": "gpu"})
        cluster.add_node("cpu-worker", num_cpus=2, labels={"vd-node": "cpu"})
        yield cluster


@pytest.fixture(scope="module")
def probe(test_root):
    path = test_root / "cluster-gpu-probe.json"
    FileGpu.write(path, total_bytes=16 * GIB, free_bytes=16 * GIB)
    return path


@pytest.fixture(scope="module")
def deployed(cluster, probe, test_root):
    config = cluster_serve_config(cluster.folder, probe)
    cluster.serve_deploy(write_config(config, cluster.folder / "serve_config.yaml"))
    wait_for_condition(lambda: _app_status(cluster) == "RUNNING", timeout_s=240, interval_s=2)
    wait_for_condition(lambda: _served_by(cluster.head.http_url) == "gpu", timeout_s=120, interval_s=1)
    return config


def _app_status(cluster: LocalCluster) -> str:
    return cluster.serve_status()["applications"][APP]["status"]


def _served_by(base_url: str) -> str:
    response = httpx.post(f"{base_url}/v1/chat/completions", json=REQUEST, timeout=60)
    assert response.status_code == 200, response.text
    return response.headers["x-served-by-group"]


def test_serve_deploy_brings_every_deployment_up_and_serve_status_says_so(cluster, deployed):
    status = cluster.serve_status()

    application = status["applications"][APP]
    assert application["status"] == "RUNNING"
    assert {name: deployment["status"] for name, deployment in application["deployments"].items()} == {
        "Ingress": "HEALTHY", "gpu_group": "HEALTHY", "cpu_group": "HEALTHY", "JobRunner": "HEALTHY",
    }
    assert {proxy_status for proxy_status in status["proxies"].values()} == {"HEALTHY"}
    assert len(status["proxies"]) == 3  # proxy_location: EveryNode


def test_each_group_runs_where_it_belongs(cluster, deployed):
    memory = httpx.get(f"{cluster.head.http_url}/v1/memory", timeout=60).json()

    assert {replica["node_ip"] for replica in memory["groups"]["gpu"]} == {cluster.node("gpu-worker").ip}
    assert {replica["node_ip"] for replica in memory["groups"]["cpu"]} == {cluster.node("cpu-worker").ip}
    assert {replica["state"] for group in memory["groups"].values() for replica in group} == {"ready"}
    details = httpx.get(f"{cluster.dashboard_url}/api/serve/applications/", timeout=30).json()
    ingress = details["applications"][APP]["deployments"]["Ingress"]["replicas"]
    assert {replica["node_ip"] for replica in ingress} == {cluster.head.ip}  # ingress.node_labels: on the head
    runner = details["applications"][APP]["deployments"]["JobRunner"]["replicas"]
    assert {replica["node_ip"] for replica in runner} == {cluster.head.ip}  # the ingress's labels: a lost worker keeps it


def test_every_nodes_proxy_answers(cluster, deployed):
    for node in cluster.nodes:
        response = httpx.post(f"{node.http_url}/v1/chat/completions", json=REQUEST, timeout=60)
        assert response.status_code == 200, (node.name, response.text)
        assert response.json()["usage"]["completion_tokens"] >= 1
        assert httpx.get(f"{node.http_url}/readyz", timeout=60).json()["status"] == "ready"


def test_losing_the_gpu_node_under_traffic_fails_no_request_and_the_gpu_group_returns(cluster, deployed):
    """The GPU worker crashes (every process of the node killed at once) while requests flow through the head."""
    with SteadyTraffic(cluster.head.http_url, REQUEST) as traffic:
        wait_for_condition(lambda: len(traffic.results) >= 5, timeout_s=60)
        lost_at = time.monotonic()
        cluster.stop_node("gpu-worker", crash=True)
        wait_for_condition(lambda: cluster.node("gpu-worker").ip not in cluster.alive_node_ips(), timeout_s=120)
        wait_for_condition(lambda: traffic.first_after(lost_at, "cpu") is not None, timeout_s=60)

        cluster.start_node("gpu-worker")
        back_at = time.monotonic()
        recovered_s = wait_for_condition(lambda: traffic.first_after(back_at, "gpu"), timeout_s=240, interval_s=1)

    assert traffic.failed() == []
    assert len(traffic.results) >= 20
    assert recovered_s < 240
    assert _app_status(cluster) == "RUNNING"  # no redeploy


def test_a_rolling_update_under_traffic_fails_no_request_and_takes_effect(cluster, deployed, probe):
    config = cluster_serve_config(
        cluster.folder, probe, limits={"max_tokens": 256}, cpu_group={"autoscaling": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 8}},
    )
    path = write_config(config, cluster.folder / "serve_config-updated.yaml")
    before = httpx.get(f"{cluster.head.http_url}/v1/models", timeout=60).json()["data"][0]["max_model_len"]

    with SteadyTraffic(cluster.head.http_url, REQUEST) as traffic, SteadyTraffic(cluster.node("cpu-worker").http_url, REQUEST) as other:
        wait_for_condition(lambda: len(traffic.results) >= 3, timeout_s=60)
        cluster.serve_deploy(path)

        def updated() -> bool:
            models = httpx.get(f"{cluster.head.http_url}/v1/models", timeout=60).json()
            return models["data"][0]["max_model_len"] == before - 512 + 256 and _app_status(cluster) == "RUNNING"

        wait_for_condition(updated, timeout_s=300, interval_s=2)

    assert traffic.failed() == [] and other.failed() == []
    assert len(traffic.results) + len(other.results) >= 10
    too_long = httpx.post(f"{cluster.head.http_url}/v1/chat/completions", json={**REQUEST, "max_tokens": 300}, timeout=60)
    assert too_long.status_code == 400 and "256" in too_long.text
    deployments = httpx.get(f"{cluster.dashboard_url}/api/serve/applications/", timeout=30).json()["applications"][APP]["deployments"]
    assert deployments["cpu_group"]["deployment_config"]["autoscaling_config"]["max_replicas"] == 3
    # routing.drain_timeout_s: a replica being replaced finishes what it holds (Serve's own 20 s failed a request here)
    assert {name: deployment["deployment_config"]["graceful_shutdown_timeout_s"] for name, deployment in deployments.items()} == {
        "Ingress": 600.0, "gpu_group": 600.0, "cpu_group": 600.0, "JobRunner": 5.0,  # its work is in the store
    }
