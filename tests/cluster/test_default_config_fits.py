"""The default ``serve_config.yaml`` comes up, with ``serve deploy``, on one small node: 2 CPUs with or without a GPU.

A single-node cluster from ``ray start`` (in a network namespace, as in the multi-node tests), the repository's
config unchanged but for the proxy's address: every deployment must be scheduled and the ingress must answer.
With a (logical) GPU the GPU group is scheduled too and finds no CUDA; without one it waits unscheduled. The
CPU group answers either way.
"""

import httpx
import pytest
import yaml
from polling import wait_for_condition

from bench.local_cluster import REPO, LocalCluster, namespaces_unavailable, write_config

pytestmark = pytest.mark.cluster

APP = "video-detective"
# As a real deployment on 0.0.0.0 runs: with a key in the nodes' environment (without one only loopback is answered).
ADMIN_KEY = "vd-cluster-admin-key-0001"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.mark.parametrize("num_gpus", [1, 0], ids=["2-cpus-1-gpu", "2-cpus-no-gpu"])
def test_the_default_config_comes_up_on_a_two_cpu_node(num_gpus, test_root, tiny_model_path):
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(f"No namespaced Ray node on this machine: {reason}")
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["http_options"]["host"] = "0.0.0.0"  # reachable from outside the node's namespace
    with LocalCluster(test_root / f"one-{num_gpus}", env={"VIDEO_DETECTIVE_ADMIN_KEYS": ADMIN_KEY}) as cluster:
        cluster.start_head(num_cpus=2, num_gpus=num_gpus)
        cluster.serve_deploy(write_config(config, cluster.folder / "serve_config.yaml"))

        def ingress_answers() -> bool:
            return httpx.get(f"{cluster.head.http_url}/healthz", timeout=5).status_code == 200

        wait_for_condition(ingress_answers, timeout_s=240, interval_s=1)
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        response = wait_for_condition(
            lambda: (r := httpx.post(f"{cluster.head.http_url}/v1/chat/completions", json=chat, headers=AUTH, timeout=120)).status_code == 200 and r,
            timeout_s=240, interval_s=1,
        )
        assert response.headers["x-served-by-group"] == "cpu"
        deployments = cluster.serve_status()["applications"][APP]["deployments"]
        assert deployments["Ingress"]["replica_states"] == {"RUNNING": 1}
        assert deployments["cpu_group"]["replica_states"] == {"RUNNING": 1}
        if num_gpus:
            # Scheduled beside the others on the 2 CPUs (1 + 1 + the ingress's 0), then waiting: no CUDA here.
            wait_for_condition(lambda: cluster.serve_status()["applications"][APP]["deployments"]["gpu_group"]["replica_states"].get("RUNNING") == 1, timeout_s=120)
            memory = httpx.get(f"{cluster.head.http_url}/v1/memory", headers=AUTH, timeout=60).json()
            assert [replica["state"] for replica in memory["groups"]["gpu"]] == ["waiting_for_memory"]
        else:
            assert "RUNNING" not in deployments["gpu_group"]["replica_states"]  # no GPU: never scheduled
            ready = httpx.get(f"{cluster.head.http_url}/readyz", headers=AUTH, timeout=60).json()
            assert ready["status"] == "degraded" and ready["groups"]["cpu"]["status"] == "up"
