"""Ask a video many questions, through real Serve and HTTP: the second question is answered from the replica's
media cache (the same answer under ``temperature: 0``), on the replica that holds the media, and that affinity
survives the holder's death.

Two CPU replicas (transformers), no GPU group. Each file is uploaded once (the Files API) and asked about by id.
"""

import concurrent.futures

import httpx
import media_factory
import pytest
import ray
from polling import wait_for_condition
from ray import serve

from integration.conftest import TEST_APP_ARGS, deploy

pytestmark = pytest.mark.integration

APP = "media-reuse"
MODEL_ID = "tiny-qwen2-vl"


@pytest.fixture(scope="module")
def reuse_url(http_port):
    args = {
        **TEST_APP_ARGS,
        "gpu_group": {"enabled": False},
        "cpu_group": {"num_cpus": 0.5, "autoscaling": {"min_replicas": 2, "max_replicas": 2}},
        "ingress": {**TEST_APP_ARGS["ingress"], "readiness_cache_s": 0},
        "files": {"store_url": (TEST_APP_ARGS["files"]["store_url"] + "-reuse")},
    }
    url = deploy(args, http_port, name=APP, route_prefix="/reuse")
    wait_for_condition(lambda: _ready_replicas(url) == 2, timeout_s=180)
    yield url
    serve.delete(APP)


def _replicas(url: str) -> list[dict]:
    return httpx.get(f"{url}/v1/memory", timeout=30).json()["groups"]["cpu"]


def _ready_replicas(url: str) -> int:
    return sum(replica["state"] == "ready" for replica in _replicas(url))


def _upload(url: str, seed: int) -> str:
    clip = media_factory.video_bytes("mp4", num_frames=24 + seed, fps=12)  # each seed its own bytes
    response = httpx.post(f"{url}/v1/files", files={"file": (f"clip{seed}.mp4", clip, "video/mp4")},
                          data={"purpose": "vision"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def _ask(url: str, file_id: str, question: str = "What happens?") -> httpx.Response:
    body = {"model": MODEL_ID, "temperature": 0, "max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": file_id}}, {"type": "text", "text": question}]}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def _media_cache(url: str, replica_id: str) -> dict:
    (replica,) = [replica for replica in _replicas(url) if replica["replica"] == replica_id]
    return {**replica["batching"]["media_cache"], "ids": replica["cached_media"]}


def test_the_questions_about_a_video_go_to_its_replica_and_a_hit_answers_as_the_miss_did(reuse_url):
    file_id = _upload(reuse_url, 0)
    first = _ask(reuse_url, file_id)
    assert first.status_code == 200, first.text
    holder = first.headers["x-served-by-replica"]
    before = _media_cache(reuse_url, holder)
    assert len(before["ids"]) == 1 and before["entries"] == 2  # its tower output and its prompt's media prefix

    again = [_ask(reuse_url, file_id) for _ in range(4)]

    assert [response.headers["x-served-by-replica"] for response in again] == [holder] * 4
    answers = {response.json()["choices"][0]["message"]["content"] for response in [first, *again]}
    assert len(answers) == 1  # the cached encoding gives the answer the first encoding gave
    after = _media_cache(reuse_url, holder)
    assert after["hits"] == before["hits"] + 4 and after["misses"] == before["misses"]
    assert after["ids"] == before["ids"] and after["bytes"] > 0 and after["hit_ratio"] > 0


def test_other_videos_spread_over_both_replicas(reuse_url):
    holders = {_ask(reuse_url, _upload(reuse_url, seed)).headers["x-served-by-replica"] for seed in range(1, 9)}
    assert len(holders) == 2  # a new media goes by load (power of two choices), not all to one replica


def test_affinity_survives_the_holder_being_killed(reuse_url):
    file_id = _upload(reuse_url, 20)
    holder = _ask(reuse_url, file_id).headers["x-served-by-replica"]
    assert _ask(reuse_url, file_id).headers["x-served-by-replica"] == holder
    (actor,) = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
                if actor["name"].startswith("SERVE_REPLICA") and f"{APP}#" in actor["name"] and actor["name"].endswith(holder)]

    ray.kill(ray.get_actor(actor, namespace="serve"), no_restart=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(lambda _: _ask(reuse_url, file_id), range(12)))

    assert [response.status_code for response in responses] == [200] * 12, [r.text for r in responses if r.status_code != 200]
    assert holder not in {response.headers["x-served-by-replica"] for response in responses}
    wait_for_condition(lambda: _ready_replicas(reuse_url) == 2, timeout_s=180)  # Serve replaces it; the module ends whole
