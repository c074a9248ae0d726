"""``gpu_group.num_gpus: auto`` on a real Ray node with one (logical) GPU: 4 replicas share it, a 5th waits.

A single-node cluster from ``ray start --num-gpus=1`` (in a network namespace, as in the cluster tests). The
GPU group's chain runs on the CPU against a probe file that reports a card sized so that an int8 replica of
the tiny model needs 23% of it; ``serve deploy`` then gives each replica a quarter. Five replicas are asked
for: four are placed on the one GPU, the fifth cannot be.
"""


import httpx
import pytest
import yaml
from polling import wait_for_condition

from bench.local_cluster import GPU_PROBE_FILE_ENV, REPO, LocalCluster, namespaces_unavailable, write_config
from deployments.config.app_config import load_app_config
from deployments.plan import resolve_app
from memory.probe import FileGpu

pytestmark = pytest.mark.cluster

APP = "video-detective"
ADMIN_KEY = "vd-cluster-admin-key-0002"  # the memory view from outside the node: an admin key


def test_int8_replicas_at_a_quarter_share_four_to_a_gpu(test_root, tiny_model_path):
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(f"No namespaced Ray node on this machine: {reason}")
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["http_options"]["host"] = "0.0.0.0"
    args = config["applications"][0]["args"]
    gpu = args["gpu_group"]
    gpu.update(num_gpus="auto", chain=["int8", "nf4"], device="cpu", num_cpus=0.25, load_retry_period_s=1)
    gpu["autoscaling"] = {"min_replicas": 5, "max_replicas": 5, "target_ongoing_requests": 8}
    # Size the card from the plan's own need at int8: 23% of it, so a quarter share holds one replica.
    gpu["gpu_total_bytes"] = 1 << 40
    roomy = resolve_app(load_app_config(args)).share_plan
    total = int(roomy.chosen.need_bytes / 0.23)
    gpu["gpu_total_bytes"] = total
    probe = test_root / "packing-probe.json"
    FileGpu.write(probe, total_bytes=total, free_bytes=total)
    gpu["env_vars"] = {GPU_PROBE_FILE_ENV: str(probe)}

    with LocalCluster(test_root / "packing", env={"VIDEO_DETECTIVE_ADMIN_KEYS": ADMIN_KEY}) as cluster:
        cluster.start_head(num_cpus=4, num_gpus=1)
        cluster.serve_deploy(write_config(config, cluster.folder / "serve_config.yaml"))

        def gpu_replicas() -> dict[str, int]:
            return cluster.serve_status()["applications"][APP]["deployments"]["gpu_group"]["replica_states"]

        wait_for_condition(lambda: gpu_replicas().get("RUNNING") == 4, timeout_s=300, interval_s=2)
        memory = wait_for_condition(
            lambda: (body := httpx.get(f"{cluster.head.http_url}/v1/memory", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60).json())
            and sum(replica["state"] == "ready" for replica in body["groups"]["gpu"]) == 4 and body,
            timeout_s=180, interval_s=2,
        )
        ready = [replica for replica in memory["groups"]["gpu"] if replica["state"] == "ready"]
        assert {replica["precision"] for replica in ready} == {"int8"}
        assert {replica["gpu_share"] for replica in ready} == {0.25}
        assert {replica["budget"]["limit_bytes"] for replica in ready} == {int(total * 0.25)}
        states = gpu_replicas()
        assert states.get("RUNNING") == 4 and sum(states.values()) == 5  # the fifth has no quarter left to take
