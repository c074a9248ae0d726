"""video-detective on a real multi-node Ray cluster, deployed with ``serve deploy``, its nodes sharing no filesystem.

Three ``ray start`` processes on this machine, each in a network namespace of its own (its own IP, a Serve proxy on
its own port 8000) and a mount namespace of its own (it sees only its own folder: temp dir, home, model cache), as a
cluster's pods do: a head with no CPU for replicas (as deploy/rayservice.yaml's), a GPU worker declaring one logical
GPU (the GPU group's chain runs on the CPU against a probe file) and a CPU worker labelled ``vd-node=cpu``. Files,
jobs and the model are in one object store (a real S3 server, moto's, that every node reaches). Traffic goes through
the nodes' proxies over real HTTP; the GPU worker is lost by stopping its ``ray start`` (by pid) and comes back; a
changed config is rolled out with ``serve deploy`` under traffic; the whole cluster (the head, with the ingress and
the job runner) is lost mid-job and started again on fresh filesystems.
"""

import time

import httpx
import media_factory
import pytest
from polling import wait_for_condition

from bench.local_cluster import LocalCluster, SteadyTraffic, cluster_serve_config, namespaces_unavailable, write_config
from memory.probe import FileGpu
from models.checkpoint_source import MANIFEST

pytestmark = pytest.mark.cluster

GIB = 1024**3
APP = "video-detective"
REQUEST = {"messages": [{"role": "user", "content": "Who answers?"}], "max_tokens": 2}
MODEL_URL = "s3://video-detective/models/tiny-qwen2-vl"
JOB_VIDEO = media_factory.video_bytes("mp4", num_frames=40, fps=2, width=96, height=64, gop=4)  # 20 s
JOB = {"question": "What happens?", "segment_s": 5, "frames": 2}
LONG_JOB_VIDEO = media_factory.video_bytes("mp4", num_frames=240, fps=2, width=96, height=64, gop=4)  # 120 s
LONG_JOB_SEGMENTS = 24


@pytest.fixture(scope="module")
def cluster(test_root, tiny_model_path):
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(f"No multi-node cluster on this machine: {reason}")
    folder = test_root / "cl"
    with LocalCluster(folder) as cluster:
        cluster.start_head(num_cpus=0, labels={"vd-node": "head"})  # as the manifest's head: no replica, no decode task
        cluster.add_node("gpu-worker", num_cpus=1, num_gpus=1, labels={"vd-node": "gpu"})
        cluster.add_node("cpu-worker", num_cpus=2, labels={"vd-node": "cpu"})
        store = cluster.object_store()
        for path in sorted(tiny_model_path.iterdir()):  # the model goes to the object store, as a team's would
            store.put_file(str(path), f"{MODEL_URL}/{path.name}")
        yield cluster


@pytest.fixture(scope="module")
def probe(test_root):
    path = test_root / "cluster-gpu-probe.json"
    FileGpu.write(path, total_bytes=16 * GIB, free_bytes=16 * GIB)
    return path


def _config(cluster: LocalCluster, probe, **overrides) -> dict:
    return cluster_serve_config(cluster, probe, model={"source": MODEL_URL}, **overrides)


@pytest.fixture(scope="module")
def deployed(cluster, probe, test_root):
    config = _config(cluster, probe)
    cluster.serve_deploy(write_config(config, cluster.folder / "serve_config.yaml"))
    wait_for_condition(lambda: _app_status(cluster) == "RUNNING", timeout_s=240, interval_s=2)
    wait_for_condition(lambda: _served_by(cluster.head.http_url) == "gpu", timeout_s=120, interval_s=1)
    # Serve calls a replica healthy once its constructor returns; ours is ready after its load and warm-up
    wait_for_condition(lambda: _replica_states(cluster.head.http_url) == {"ready"}, timeout_s=120, interval_s=1)
    return config


def _replica_states(base_url: str) -> set[str]:
    memory = httpx.get(f"{base_url}/v1/memory", timeout=60).json()
    return {replica["state"] for group in memory["groups"].values() for replica in group}


def _app_status(cluster: LocalCluster) -> str:
    return cluster.serve_status()["applications"][APP]["status"]


def _served_by(base_url: str) -> str:
    response = httpx.post(f"{base_url}/v1/chat/completions", json=REQUEST, timeout=60)
    assert response.status_code == 200, response.text
    return response.headers["x-served-by-group"]


def _upload(base_url: str, name: str = "clip.mp4", body: bytes = JOB_VIDEO) -> dict:
    response = httpx.post(f"{base_url}/v1/files", data={"purpose": "vision"}, files={"file": (name, body, "video/mp4")},
                          timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def _job_ended(base_url: str, job_id: str, timeout_s: float = 300) -> dict:
    def ended():
        body = httpx.get(f"{base_url}/v1/video/jobs/{job_id}", timeout=30).json()
        return body["state"] in ("succeeded", "failed", "cancelled") and body

    return wait_for_condition(ended, timeout_s=timeout_s, interval_s=1)


def _recorded_segments(cluster: LocalCluster, job_id: str) -> list[str]:
    return cluster.object_store().glob(f"{cluster.store_url}/files/*/jobs/{job_id}/segments/[0-9][0-9][0-9][0-9][0-9].json")


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
    assert _replica_states(cluster.head.http_url) == {"ready"}
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


def test_each_node_fetched_the_model_from_the_object_store_into_its_own_cache(cluster, deployed):
    from models.checkpoint_source import local_copy_folder

    memory = httpx.get(f"{cluster.head.http_url}/v1/memory", timeout=60).json()
    paths = {group: {replica["model"]["model_path"] for replica in replicas} for group, replicas in memory["groups"].items()}

    for group, node in (("gpu", "gpu-worker"), ("cpu", "cpu-worker")):
        copy = local_copy_folder(MODEL_URL, cluster.node_folder(node) / "cache")
        assert paths[group] == {str(copy)}  # the same path inside the node: its own cache, fetched there
        assert (copy / MANIFEST).is_file() and list(copy.glob("*.safetensors"))
    # The head planned and its ingress reads the processor's sizes from the metadata alone, never the weights.
    head_cache = cluster.node_folder("head") / "cache" / "checkpoints"
    (head_copy,) = [folder for folder in head_cache.iterdir() if not folder.name.startswith(".")]
    assert head_copy.name.endswith("-metadata") and not list(head_copy.glob("*.safetensors"))


def test_a_file_uploaded_through_one_nodes_proxy_is_asked_about_through_anothers(cluster, deployed):
    uploaded = _upload(cluster.node("gpu-worker").http_url, "asked-elsewhere.mp4")

    fields = {"file_id": uploaded["id"], "question": "What happens?", "frames": "4", "max_tokens": "2"}
    response = httpx.post(f"{cluster.node('cpu-worker').http_url}/v1/analyze", timeout=120,
                          files={name: (None, value) for name, value in fields.items()})  # multipart, as curl -F

    assert response.status_code == 200, response.text
    assert response.json()["frames"]["count"] == 4
    stored = cluster.object_store().glob(f"{cluster.store_url}/files/*/{uploaded['id']}")
    assert len(stored) == 1  # in the object store, and in no node's folder
    assert not [path for node in cluster.nodes for path in cluster.node_folder(node.name).rglob(f"{uploaded['id']}*")]


def test_a_jobs_segments_decode_on_a_node_other_than_the_ingresss_and_none_is_lost(cluster, deployed):
    file_id = _upload(cluster.head.http_url, "job.mp4")["id"]
    job = httpx.post(f"{cluster.node('cpu-worker').http_url}/v1/video/jobs", json={"file_id": file_id, **JOB}, timeout=60)
    assert job.status_code == 202, job.text

    ended = _job_ended(cluster.head.http_url, job.json()["id"])

    assert ended["state"] == "succeeded", ended["reason"]
    assert ended["progress"] == {"segments": 4, "done": 4, "failed": 0, "left": 0}
    decoded_on = {segment["decoded_on"] for segment in ended["segments"]}
    assert decoded_on and cluster.head.ip not in decoded_on  # the head (ingress, runner) has no CPU for decode tasks
    assert decoded_on <= {cluster.node("gpu-worker").ip, cluster.node("cpu-worker").ip}
    assert all(segment["store_bytes_fetched"] > 0 for segment in ended["segments"])  # read from S3 on that node
    assert len(_recorded_segments(cluster, ended["id"])) == 4


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
    config = _config(
        cluster, probe, limits={"max_prompt_tokens": 2048, "max_tokens": 256},
        cpu_group={"autoscaling": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 8}},
    )
    path = write_config(config, cluster.folder / "serve_config-updated.yaml")
    before = httpx.get(f"{cluster.head.http_url}/v1/models", timeout=60).json()["data"][0]["max_model_len"]
    assert before == 4096  # the default limits (8192 + 512), capped by the tiny model's positions

    with SteadyTraffic(cluster.head.http_url, REQUEST) as traffic, SteadyTraffic(cluster.node("cpu-worker").http_url, REQUEST) as other:
        wait_for_condition(lambda: len(traffic.results) >= 3, timeout_s=60)
        cluster.serve_deploy(path)

        def updated() -> bool:
            models = httpx.get(f"{cluster.head.http_url}/v1/models", timeout=60).json()
            return models["data"][0]["max_model_len"] == 2048 + 256 and _app_status(cluster) == "RUNNING"

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


def test_losing_the_head_with_the_ingress_mid_job_loses_no_file_and_no_segment(cluster, deployed):
    """The head (the ingress, the job runner, Ray's GCS) is lost mid-job, and with it the cluster, as when the head
    pod of a RayService dies: every node is killed, comes back on a fresh filesystem (a new pod), and the app is
    deployed again. The file and the job are in the object store: the new job runner adopts the job, runs what was
    left, and every segment ends recorded once."""
    file_id = _upload(cluster.head.http_url, "survives.mp4", LONG_JOB_VIDEO)["id"]
    started = httpx.post(f"{cluster.head.http_url}/v1/video/jobs", json={"file_id": file_id, **JOB}, timeout=60).json()
    wait_for_condition(lambda: len(_recorded_segments(cluster, started["id"])) >= 1, timeout_s=240, interval_s=0.2)

    for node in reversed(cluster.nodes):
        cluster.stop_node(node.name, crash=True)
    recorded_at_loss = len(_recorded_segments(cluster, started["id"]))
    assert 1 <= recorded_at_loss < LONG_JOB_SEGMENTS  # lost mid-job
    for node in cluster.nodes:
        cluster.wipe_node_folder(node.name)  # a new pod: nothing of the old one's disk
        cluster.start_node(node.name)
    cluster.serve_deploy(write_config(deployed, cluster.folder / "serve_config-after-restart.yaml"))
    wait_for_condition(lambda: _app_status(cluster) == "RUNNING", timeout_s=300, interval_s=2)

    ended = _job_ended(cluster.head.http_url, started["id"], timeout_s=360)
    assert ended["state"] == "succeeded", ended["reason"]
    assert ended["progress"] == {"segments": LONG_JOB_SEGMENTS, "done": LONG_JOB_SEGMENTS, "failed": 0, "left": 0}
    recorded = _recorded_segments(cluster, started["id"])
    assert len(recorded) == len({path.rsplit("/", 1)[-1] for path in recorded}) == LONG_JOB_SEGMENTS  # each once
    kept = httpx.get(f"{cluster.head.http_url}/v1/files/{file_id}/content", timeout=60)
    assert kept.status_code == 200 and kept.content == LONG_JOB_VIDEO
