"""video-detective on a three-node Ray cluster: start-up, every node's proxy, a lost node, a rolling update.

The cluster is ``bench/local_cluster.py``'s: a head (no CPU for replicas, as the manifest's), a GPU worker (1 CPU,
one logical GPU; the GPU group's chain runs on the CPU against a probe file) and a CPU worker (2 CPUs, labelled
``vd-node=cpu``), each a ``ray start`` in a network and mount namespace of its own on this machine (the nodes
share no filesystem); files, jobs and the model are in one object store (moto's S3 server); the app goes on with
``serve deploy``.
Requests run one after another through the head's proxy during each event:

1. deploy: seconds from ``serve deploy`` to the app RUNNING and answering from the GPU group;
2. proxies: median latency of 20 requests through each node's proxy;
3. node drained (SIGTERM to the GPU worker's ``ray start``, as a machine's shutdown sends) and started again;
4. node crashed (every process of the GPU worker killed at once) and started again;
5. a long-video job (a 10-minute 720p file, 20 segments) with the GPU worker crashed once 3 segments are
   recorded: the job must complete with every segment recorded once (``lost``: target 0);
6. rolling update: ``serve deploy`` of a changed config (``limits.max_tokens``, the CPU group's ``max_replicas``).

For each event: requests answered, failed (target 0), the slowest request, seconds until the CPU group answers
after the loss, and until the GPU group answers again after the node is back (no redeploy).

Needs root (network namespaces). Usage: sudo .venv/bin/python -m bench.cluster [--only-job] [--json]
"""

import argparse
import json
import logging
import pathlib
import statistics
import sys
import tempfile
import time

import httpx

from bench.jobs import long_video
from bench.local_cluster import LocalCluster, SteadyTraffic, cluster_serve_config, namespaces_unavailable, write_config
from bench.polling import wait_for
from memory.probe import FileGpu

logger = logging.getLogger("bench.cluster")
GIB = 1024**3
APP = "video-detective"
REQUEST = {"messages": [{"role": "user", "content": "Who answers?"}], "max_tokens": 4}


def _wait(condition, timeout_s: float, what: str):
    return wait_for(condition, timeout_s, what, interval_s=0.5, tolerated=(httpx.HTTPError, RuntimeError, KeyError))


def _served_by(url: str) -> str:
    return httpx.post(f"{url}/v1/chat/completions", json=REQUEST, timeout=60).headers.get("x-served-by-group", "")


def _figures(traffic: SteadyTraffic, lost_at: float | None = None, back_at: float | None = None) -> dict:
    figures = {
        "requests": len(traffic.results),
        "failed": len(traffic.failed()),
        "slowest_s": round(max((seconds for *_, seconds in traffic.results), default=0.0), 3),
        "groups": sorted({group for _, status, group, _ in traffic.results if status == 200}),
    }
    if lost_at is not None:
        cpu = traffic.first_after(lost_at, "cpu")
        figures["cpu_answers_after_loss_s"] = round(cpu, 2) if cpu is not None else None
    if back_at is not None:
        gpu = traffic.first_after(back_at, "gpu")
        figures["gpu_answers_after_return_s"] = round(gpu, 2) if gpu is not None else None
    return figures


def _lose_gpu_node(cluster: LocalCluster, *, crash: bool) -> dict:
    with SteadyTraffic(cluster.head.http_url, REQUEST) as traffic:
        _wait(lambda: len(traffic.results) >= 5, 60, "traffic")
        lost_at = time.monotonic()
        cluster.stop_node("gpu-worker", crash=crash)
        stopped_s = time.monotonic() - lost_at
        _wait(lambda: cluster.node("gpu-worker").ip not in cluster.alive_node_ips(), 120, "node counted dead")
        dead_s = time.monotonic() - lost_at
        _wait(lambda: traffic.first_after(lost_at, "cpu") is not None, 60, "the CPU group answering")
        cluster.start_node("gpu-worker")
        back_at = time.monotonic()
        _wait(lambda: traffic.first_after(back_at, "gpu") is not None, 300, "the GPU group answering again")
    return {**_figures(traffic, lost_at, back_at), "node_stopped_s": round(stopped_s, 2), "node_counted_dead_s": round(dead_s, 2)}


def job_with_gpu_node_lost(cluster: LocalCluster, video: pathlib.Path, *, segment_s: int = 30, lose_after: int = 3) -> dict:
    """A job over ``video`` through the head's proxy; the GPU worker crashes once ``lose_after`` segments are
    recorded and comes back after the job ends. Every segment must end recorded once: ``lost`` counts those
    that did not (target 0)."""
    url = cluster.head.http_url
    with open(video, "rb") as file:
        uploaded = httpx.post(f"{url}/v1/files", data={"purpose": "vision"}, files={"file": (video.name, file, "video/mp4")},
                              timeout=600)
    uploaded.raise_for_status()
    started = time.monotonic()
    job = httpx.post(f"{url}/v1/video/jobs", timeout=60, json={
        "file_id": uploaded.json()["id"], "question": "What happens?", "segment_s": segment_s, "frames": 4}).json()
    store = cluster.object_store()
    recorded = lambda: store.glob(f"{cluster.store_url}/files/*/jobs/{job['id']}/segments/[0-9][0-9][0-9][0-9][0-9].json")  # noqa: E731
    _wait(lambda: len(recorded()) >= lose_after, 600, f"{lose_after} segments recorded")
    lost_at = time.monotonic()
    cluster.stop_node("gpu-worker", crash=True)
    ended = _wait(lambda: (body := httpx.get(f"{url}/v1/video/jobs/{job['id']}", timeout=30).json())["state"]
                  in ("succeeded", "failed", "cancelled") and body, 900, "the job's end")
    ended_at = time.monotonic()
    cluster.start_node("gpu-worker")
    files = recorded()
    progress = ended["progress"]
    return {
        "state": ended["state"], "segments": progress["segments"], "done": progress["done"], "failed": progress["failed"],
        "lost": progress["segments"] - progress["done"] - progress["failed"],
        "recorded_once": len(files) == len({path.rsplit("/", 1)[-1] for path in files}) == progress["segments"],
        "segments_tried_again": sum(1 for segment in ended["segments"] if segment.get("attempts", 1) > 1),
        "served_by": {group: sum(1 for segment in ended["segments"] if segment.get("served_by", {}).get("group") == group)
                      for group in ("gpu", "cpu")},
        "recorded_before_loss": lose_after, "job_s": round(ended_at - started, 1), "loss_to_end_s": round(ended_at - lost_at, 1),
    }


def _model_in_store(cluster: LocalCluster) -> str:
    """The built-in model, put in the cluster's object store as a team puts its checkpoint: every node fetches it."""
    from models.adapters.tiny import ensure_tiny_model

    url = f"{cluster.store_url}/models/tiny-qwen2-vl"
    store = cluster.object_store()
    for path in sorted(ensure_tiny_model().iterdir()):
        store.put_file(str(path), f"{url}/{path.name}")
    return url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only-job", action="store_true", help="the job with the GPU node lost, and nothing else")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    reason = namespaces_unavailable()
    if reason:
        logger.error("Cannot build the cluster here: %s", reason)
        return 2
    folder = pathlib.Path(tempfile.mkdtemp(prefix="vd-cl-"))
    probe = folder / "gpu-probe.json"
    FileGpu.write(probe, total_bytes=16 * GIB, free_bytes=16 * GIB)
    report: dict = {}
    started = time.monotonic()
    with LocalCluster(folder) as cluster:
        cluster.start_head(num_cpus=0, labels={"vd-node": "head"})  # as the manifest's: no replica, no decode task
        cluster.add_node("gpu-worker", num_cpus=1, num_gpus=1, labels={"vd-node": "gpu"})
        cluster.add_node("cpu-worker", num_cpus=2, labels={"vd-node": "cpu"})
        report["cluster_start_s"] = round(time.monotonic() - started, 2)
        model = {"source": _model_in_store(cluster)}
        deploy_at = time.monotonic()
        cluster.serve_deploy(write_config(cluster_serve_config(cluster, probe, model=model), folder / "serve_config.yaml"))
        _wait(lambda: cluster.serve_status()["applications"][APP]["status"] == "RUNNING", 300, "app RUNNING")
        _wait(lambda: _served_by(cluster.head.http_url) == "gpu", 120, "the GPU group answering")
        report["deploy_to_answer_s"] = round(time.monotonic() - deploy_at, 2)
        if args.only_job:
            report["job_gpu_node_lost"] = job_with_gpu_node_lost(cluster, long_video(600))
            logger.info("job_gpu_node_lost    %s", report["job_gpu_node_lost"])
            if args.json:
                sys.stdout.write(json.dumps(report, indent=2) + "\n")
            return 0

        proxies = {}
        for node in cluster.nodes:
            with httpx.Client(base_url=node.http_url, timeout=60) as client:
                latencies = []
                for _ in range(20):
                    begun = time.perf_counter()
                    client.post("/v1/chat/completions", json=REQUEST).raise_for_status()
                    latencies.append(time.perf_counter() - begun)
            proxies[node.name] = round(statistics.median(latencies) * 1000, 1)
        report["proxy_p50_ms"] = proxies

        report["gpu_node_drained"] = _lose_gpu_node(cluster, crash=False)
        report["gpu_node_crashed"] = _lose_gpu_node(cluster, crash=True)
        _wait(lambda: _served_by(cluster.head.http_url) == "gpu", 300, "the GPU group answering again")
        report["job_gpu_node_lost"] = job_with_gpu_node_lost(cluster, long_video(600))

        updated = cluster_serve_config(
            cluster, probe, model=model, limits={"max_tokens": 256},
            cpu_group={"autoscaling": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 8}},
        )
        with SteadyTraffic(cluster.head.http_url, REQUEST) as traffic:
            _wait(lambda: len(traffic.results) >= 5, 60, "traffic")
            update_at = time.monotonic()
            cluster.serve_deploy(write_config(updated, folder / "serve_config-updated.yaml"))
            _wait(
                lambda: httpx.get(f"{cluster.head.http_url}/v1/models", timeout=30).json()["data"][0]["max_model_len"]
                == updated["applications"][0]["args"]["limits"]["max_prompt_tokens"] + 256,
                300, "the new config in effect",
            )
            _wait(lambda: cluster.serve_status()["applications"][APP]["status"] == "RUNNING", 300, "app RUNNING")
            in_effect_s = time.monotonic() - update_at
        report["rolling_update"] = {**_figures(traffic), "new_config_in_effect_s": round(in_effect_s, 2)}

    for name, value in report.items():
        logger.info("%-20s %s", name, value)
    failed = sum(report[event]["failed"] for event in ("gpu_node_drained", "gpu_node_crashed", "rolling_update"))
    logger.info("failed requests over the three events: %d (target 0)", failed)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
