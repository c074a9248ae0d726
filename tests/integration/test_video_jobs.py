"""Long videos as durable jobs, through real Serve and HTTP: upload, job, timeline, final answer; ownership,
bad input, quotas, cancellation; a CPU replica, the job runner and the ingress killed mid-job.

The app: the CPU group on two replicas (the GPU group off), the job runner, jobs kept in a store folder of
the test's. The video: two minutes of a real H.264 file (PyAV), cut into segments of 10 s.
"""

import json
import pathlib
import threading
import time

import httpx
import media_factory
import pytest
import ray
from doc_examples import code_blocks
from job_requests import start_job as _start
from job_requests import upload_video
from polling import wait_for_condition
from ray import serve

from integration.conftest import TEST_APP_ARGS, deploy

pytestmark = pytest.mark.integration

KEYS = ("vd-jobs-key-alice-0001", "vd-jobs-key-bob-0002")
APP = "jobs"
VIDEO_S = 120
SEGMENT_S = 10
SEGMENTS = VIDEO_S // SEGMENT_S
VIDEO = media_factory.video_bytes("mp4", num_frames=VIDEO_S * 2, fps=2, gop=20)
MAX_ACTIVE_JOBS = 2


@pytest.fixture(scope="module")
def jobs_url(http_port, test_root):
    keys_file = test_root / "jobs-api-keys"
    keys_file.write_text("\n".join(KEYS) + "\n")
    args = {
        "limits": {**TEST_APP_ARGS["limits"], "max_prompt_tokens": 400},
        "gpu_group": {"enabled": False},
        "cpu_group": {"num_cpus": 0.5, "autoscaling": {"min_replicas": 2, "max_replicas": 2}},
        "auth": {"api_keys_file": str(keys_file)},
        "files": {"store_url": (test_root / "jobs-store").as_uri()},
        "ingress": {"num_cpus": 0.25, "upload_dir": TEST_APP_ARGS["ingress"]["upload_dir"]},
        "jobs": {
            "min_segment_s": 2, "default_segment_s": SEGMENT_S, "max_running_segments": 2,
            "max_running_segments_per_job": 2, "max_active_jobs_per_key": MAX_ACTIVE_JOBS,
            "max_queued_segments_per_key": 60, "scan_period_s": 0.5, "decode_num_cpus": 0.1,
        },
    }
    url = deploy(args, http_port, name=APP, route_prefix="/jobs")
    yield url
    serve.delete(APP)


def _client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=60)


@pytest.fixture(scope="module")
def alice(jobs_url):
    with _client(jobs_url, KEYS[0]) as client:
        yield client


@pytest.fixture(scope="module")
def bob(jobs_url):
    with _client(jobs_url, KEYS[1]) as client:
        yield client


@pytest.fixture(scope="module")
def video_id(alice):
    return upload_video(alice, VIDEO, "two-minutes.mp4")


def _ended(client: httpx.Client, job_id: str, timeout_s: float = 240) -> dict:
    def ended() -> dict | None:
        body = client.get(f"/v1/video/jobs/{job_id}").json()
        return body if body["state"] in ("succeeded", "failed", "cancelled") else None

    return wait_for_condition(ended, timeout_s=timeout_s, interval_s=0.5)


def _segment_files(test_root: pathlib.Path, job_id: str) -> list[pathlib.Path]:
    return sorted((test_root / "jobs-store").glob(f"*/jobs/{job_id}/segments/[0-9][0-9][0-9][0-9][0-9].json"))


def _check_complete(body: dict) -> None:
    """Every segment answered once, in its own window, and the timeline in the whole video's clock."""
    assert body["state"] == "succeeded", body["reason"]
    assert body["progress"] == {"segments": SEGMENTS, "done": SEGMENTS, "failed": 0, "left": 0}
    indices = [segment["index"] for segment in body["segments"]]
    assert indices == list(range(SEGMENTS))
    for segment in body["segments"]:
        start, end = segment["index"] * SEGMENT_S, (segment["index"] + 1) * SEGMENT_S
        assert (segment["start_s"], segment["end_s"]) == (start, end)
        times = segment["frames"]["timestamps_s"]
        assert len(times) == 4 and all(start <= t < end for t in times), (segment["index"], times)
    for event in body["timeline"]:
        segment = body["segments"][event["segment"]]
        assert segment["start_s"] <= event["time_s"] <= segment["end_s"]
        assert event["thumbnail_url"].endswith(f"/v1/video/jobs/{body['id']}/thumbnails/{event['segment']}/{event['frame']}")
    assert [event["time_s"] for event in body["timeline"]] == sorted(event["time_s"] for event in body["timeline"])
    assert isinstance(body["final"]["answer"], str) and body["final"]["usage"]["completion_tokens"] >= 1


def test_a_job_answers_every_segment_once_and_builds_a_timeline_and_a_final_answer(alice, video_id, test_root):
    started = _start(alice, video_id, seed=7)
    assert started["state"] == "queued" and started["progress"]["segments"] == SEGMENTS
    assert started["duration_s"] == pytest.approx(VIDEO_S, abs=0.6)

    body = _ended(alice, started["id"])

    _check_complete(body)
    assert {segment["served_by"]["group"] for segment in body["segments"]} == {"cpu"}
    assert len(_segment_files(test_root, started["id"])) == SEGMENTS
    # The default schema's answers parse: the events come from the model's JSON.
    parsed = [segment for segment in body["segments"] if segment["answer"] is not None]
    assert parsed and all(isinstance(segment["answer"]["events"], list) for segment in parsed)
    timings = body["timings"]
    assert timings["wall_s"] > 0 and timings["inference_s"] > 0
    assert 0 < timings["final_inference_s"] < timings["wall_s"]  # the final answer's own time, beside the segments'
    # A thumbnail is stored once per frame and served from its own route as a JPEG.
    event = (body["timeline"] or [None])[0]
    link = event["thumbnail_url"] if event else body["segments"][0]["thumbnail_url"]
    picture = alice.get(link.removeprefix("/jobs"))
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg" and picture.content[:2] == b"\xff\xd8"
    assert "data:image" not in json.dumps(body)
    missing = alice.get(f"/v1/video/jobs/{started['id']}/thumbnails/{SEGMENTS + 5}/0")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "thumbnail_not_found"
    # Pages: a bounded number of segments each, the next page after the last index, the timeline the page's.
    first = alice.get(f"/v1/video/jobs/{started['id']}", params={"limit": 5}).json()
    second = alice.get(f"/v1/video/jobs/{started['id']}", params={"after": first["next_after"], "limit": 100}).json()
    assert [segment["index"] for segment in first["segments"]] == [0, 1, 2, 3, 4] and first["has_more"]
    assert [segment["index"] for segment in second["segments"]] == list(range(5, SEGMENTS)) and not second["has_more"]
    assert first["timeline"] + second["timeline"] == body["timeline"]
    assert alice.get(f"/v1/video/jobs/{started['id']}", params={"limit": 501}).status_code == 422


def _media_cache_totals(client: httpx.Client) -> tuple[int, int]:
    caches = [replica["batching"]["media_cache"] for replica in client.get("/v1/memory").json()["groups"]["cpu"]]
    return sum(cache["hits"] for cache in caches), sum(cache["misses"] for cache in caches)


def test_a_job_run_again_over_the_same_video_finds_every_segment_encoded_where_it_went_before(alice, video_id):
    first = _ended(alice, _start(alice, video_id, seed=11)["id"])
    hits, misses = _media_cache_totals(alice)

    again = _ended(alice, _start(alice, video_id, seed=11)["id"])

    _check_complete(again)
    # Each segment's frames have the identity they had (the file, their times, their size), and each went to the
    # replica that encoded them: none encoded again.
    assert _media_cache_totals(alice) == (hits + SEGMENTS, misses)
    assert [segment["answer"] for segment in again["segments"]] == [segment["answer"] for segment in first["segments"]]


def test_the_events_stream_each_segment_as_it_lands_and_ends_with_the_whole_job(alice, video_id):
    job = _start(alice, video_id, segment_s=20)
    events = []
    with alice.stream("GET", f"/v1/video/jobs/{job['id']}/events", timeout=240) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))

    names = [name for name, _ in events]
    assert names[0] == "progress" and names[-1] == "done"
    segments = [payload for name, payload in events if name == "segment"]
    assert sorted(segment["index"] for segment in segments) == list(range(VIDEO_S // 20))
    done = [payload["done"] for name, payload in events if name == "progress"]
    assert done == sorted(done) and done[-1] == VIDEO_S // 20
    assert events[-1][1]["state"] == "succeeded" and events[-1][1]["final"]["answer"] is not None


def test_a_job_is_its_key_s_only(alice, bob, video_id):
    job = _start(alice, video_id, segment_s=60)

    for method, path in (("GET", ""), ("GET", "/events"), ("DELETE", "")):
        response = bob.request(method, f"/v1/video/jobs/{job['id']}{path}")
        assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found"
    assert job["id"] not in [listed["id"] for listed in bob.get("/v1/video/jobs").json()["data"]]
    assert job["id"] in [listed["id"] for listed in alice.get("/v1/video/jobs").json()["data"]]
    # Bob cannot start a job on Alice's file either.
    response = bob.post("/v1/video/jobs", json={"file_id": video_id, "question": "?"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "file_not_found"
    _ended(alice, job["id"])


@pytest.mark.parametrize(
    ("fields", "status", "param"),
    [
        ({"file_id": "file-" + "0" * 24}, 404, "file_id"),
        ({"segment_s": 1}, 400, "segment_s"),
        ({"segment_s": 0.05}, 400, "segment_s"),  # also: too many segments
        ({"frames": 9}, 400, "frames"),
        ({"frames": 2, "fps": 1}, 400, "fps"),
        ({"max_tokens": 4001}, 400, "max_tokens"),
        ({"question": "  "}, 400, "question"),
        ({"colour": "red"}, 400, "colour"),
        ({"json_schema": {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(2000)}}}, 400, "json_schema"),
        ({"model": "another-model"}, 404, "model"),
    ],
)
def test_a_bad_job_is_refused_with_its_reason_and_nothing_is_stored(alice, video_id, fields, status, param, test_root):
    before = len(list((test_root / "jobs-store").glob("*/jobs/job-*")))
    response = alice.post("/v1/video/jobs", json={"file_id": video_id, "question": "What happens?", **fields})
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    assert len(list((test_root / "jobs-store").glob("*/jobs/job-*"))) == before
    assert alice.get("/v1/models").status_code == 200


def test_an_image_file_and_unknown_jobs_are_refused(alice):
    image = alice.post("/v1/files", data={"purpose": "vision"}, files={"file": ("a.png", media_factory.image_bytes("PNG"), "image/png")})
    response = alice.post("/v1/video/jobs", json={"file_id": image.json()["id"], "question": "?"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "not_a_video"
    for job_id in ("job-" + "0" * 24, "../../etc", "job-xyz"):
        assert alice.get(f"/v1/video/jobs/{job_id}").status_code == 404


def test_quotas_refuse_a_job_over_the_key_s_active_jobs_and_a_cancel_stops_a_job_within_two_seconds(alice, video_id, test_root):
    jobs = [_start(alice, video_id, segment_s=5)]  # 24 segments of the 60 a key may have waiting
    response = alice.post("/v1/video/jobs", json={"file_id": video_id, "question": "?", "segment_s": 2})
    assert response.status_code == 429 and "with this job's 60" in response.json()["error"]["message"]
    assert "jobs.max_queued_segments_per_key" in response.json()["error"]["message"]
    jobs.append(_start(alice, video_id, segment_s=5))
    response = alice.post("/v1/video/jobs", json={"file_id": video_id, "question": "?", "segment_s": 60})
    assert response.status_code == 429 and "jobs.max_active_jobs_per_key" in response.json()["error"]["message"]

    # Both run (two segments in flight over all jobs); cancel them once some segments are recorded.
    wait_for_condition(lambda: len(_segment_files(test_root, jobs[0]["id"])) >= 1, timeout_s=120)
    for job in jobs:
        asked = time.monotonic()
        response = alice.delete(f"/v1/video/jobs/{job['id']}")
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "cancelled" and time.monotonic() - asked < 2.0
    recorded = [len(_segment_files(test_root, job["id"])) for job in jobs]
    assert all(count < VIDEO_S // 5 for count in recorded)
    time.sleep(3)  # nothing may land after the cancel: no segment runs on
    assert [len(_segment_files(test_root, job["id"])) for job in jobs] == recorded
    jobs_view = alice.get("/v1/memory").json()["jobs"]
    assert jobs_view["running_segments"] == 0 and jobs_view["queued_segments"] == 0
    # Cancelled jobs no longer count against the quota.
    replacement = _start(alice, video_id, segment_s=60)
    assert alice.delete(f"/v1/video/jobs/{replacement['id']}").json()["state"] == "cancelled"


def _serve_actors(fragment: str) -> list[str]:
    names = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
             if actor["name"].startswith("SERVE_REPLICA") and f"{APP}#" in actor["name"] and fragment in actor["name"]]
    assert names, f"no {fragment} replica of {APP}"
    return names


LONG_ANSWER = {
    "type": "object",
    "properties": {"events": {"type": "array", "minItems": 20, "items": {
        "type": "object",
        "properties": {"time_s": {"type": "number"}, "description": {"type": "string", "minLength": 20}},
        "required": ["time_s", "description"],
    }}},
    "required": ["events"],
}


@pytest.mark.parametrize("victim", ["cpu_group", "JobRunner", "Ingress"])
def test_a_job_completes_with_every_segment_once_when_a_process_dies_mid_job(alice, video_id, test_root, victim):
    # For the replicas' death, answers the schema makes long (20 events or more): a segment is held for seconds, not
    # the tiny model's tenth of a second, so the kill lands while one runs.
    job = _start(alice, video_id, **({"json_schema": LONG_ANSWER, "max_tokens": 2000} if victim == "cpu_group" else {}))
    wait_for_condition(lambda: len(_segment_files(test_root, job["id"])) >= 2, timeout_s=180, interval_s=0.1)
    victims = [ray.get_actor(name, namespace="serve") for name in _serve_actors(victim)]  # both CPU replicas
    if victim == "cpu_group":  # kill them while a replica holds a segment
        wait_for_condition(lambda: alice.get("/v1/memory").json()["jobs"]["running_segments_by_group"].get("cpu", 0) >= 1,
                           timeout_s=60, interval_s=0.02)

    for actor in victims:  # the segments in flight die with them
        ray.kill(actor, no_restart=True)

    # Every segment recorded once, the ones in flight included: tried again by the runner (their attempts say so) or
    # sent again by the router to the group's new replicas (their attempts do not), never lost or recorded twice.
    body = _ended(alice, job["id"])
    _check_complete(body)
    assert len(_segment_files(test_root, job["id"])) == SEGMENTS


def test_a_result_another_runner_recorded_first_is_counted_in_the_job_s_summary(alice, video_id, test_root):
    """Two runners may take one job (a rolling update's old and new replica): each result is recorded once, by
    whichever puts it first, and the job's summary when it ends is what is recorded, not what this runner counted."""
    from deployments.files.store import FileStore, owner_of
    from deployments.jobs.results import SegmentResult, SegmentState
    from deployments.jobs.store import JobStore

    store = JobStore(FileStore((test_root / "jobs-store").as_uri()))
    job = _start(alice, video_id)
    wait_for_condition(lambda: alice.get(f"/v1/video/jobs/{job['id']}").json()["state"] == "running", timeout_s=60,
                       interval_s=0.05)
    last = SEGMENTS - 1  # run last: queued behind the others, so this runner has not reached it
    record = store.get(owner_of(KEYS[0]), job["id"])
    start = last * SEGMENT_S
    other = SegmentResult(index=last, start_s=start, end_s=VIDEO_S, state=SegmentState.DONE, text="recorded by another runner",
                          frames={"count": 4, "timestamps_s": [start + 1.25, start + 3.75, start + 6.25, start + 8.75],
                                  "substituted": 0})
    assert store.put_segment(record, other) is not None

    body = _ended(alice, job["id"])

    _check_complete(body)  # every segment counted once: the other runner's too
    assert [segment["text"] for segment in body["segments"] if segment["index"] == last] == ["recorded by another runner"]


CHAT = {"messages": [{"role": "user", "content": "Describe a quiet kitchen."}], "max_tokens": 8}


def test_interactive_requests_hold_a_job_to_its_bound_under_load_and_every_one_is_answered(alice, video_id, test_root):
    job = _start(alice, video_id, segment_s=5)  # 24 segments: longer than the chats below
    wait_for_condition(lambda: len(_segment_files(test_root, job["id"])) >= 1, timeout_s=120, interval_s=0.1)
    statuses: list[int] = []
    stop = threading.Event()

    def chat() -> None:
        with _client(alice.base_url, KEYS[0]) as client:
            while not stop.is_set():
                statuses.append(client.post("/v1/chat/completions", json=CHAT).status_code)

    chatting = threading.Thread(target=chat)
    chatting.start()
    try:
        # The runner sees the chats and lets at most jobs.max_running_segments_under_load (1) segment run.
        view = wait_for_condition(
            lambda: (jobs := alice.get("/v1/memory").json()["jobs"])["under_interactive_load"]
            and jobs["running_segments"] <= 1 and jobs, timeout_s=30, interval_s=0.2)
        assert view["max_running_segments"] == 1
        recorded = len(_segment_files(test_root, job["id"]))
        wait_for_condition(lambda: len(_segment_files(test_root, job["id"])) > recorded, timeout_s=60)  # not starved
    finally:
        stop.set()
        chatting.join()
    assert statuses and set(statuses) == {200}
    # Quiet again (jobs.interactive_quiet_s after the last chat): back to the full bound.
    wait_for_condition(lambda: not alice.get("/v1/memory").json()["jobs"]["under_interactive_load"], timeout_s=30)
    assert alice.delete(f"/v1/video/jobs/{job['id']}").status_code == 200  # cancelled, or deleted if it ended meanwhile


def _documented_job_example() -> str:
    """docs/api.md's Python example of a job (the block that posts to ``/video/jobs``)."""
    (example,) = [block for block in code_blocks("docs/api.md", "python") if 'client.post("/video/jobs"' in block]
    return example


@pytest.mark.parametrize("cancel_it", [False, True], ids=["succeeds", "cancelled"])
def test_the_documented_openai_client_example_runs_as_written(jobs_url, tmp_path, capsys, cancel_it):
    """docs/api.md's example, run as written but for the server's address, the key and the file: it prints the
    timeline and the final answer, or, for a job that did not succeed (here one cancelled at once), why."""
    (tmp_path / "night.mp4").write_bytes(VIDEO)
    example = _documented_job_example()
    example = example.replace('base_url="http://127.0.0.1:8000/v1", api_key="unused"',
                              f'base_url="{jobs_url}/v1", api_key="{KEYS[0]}"')
    example = example.replace('open("night.mp4", "rb")', f'open("{tmp_path / "night.mp4"}", "rb")')
    if cancel_it:
        example = example.replace("while job[", "client.delete(f\"/video/jobs/{job['id']}\", cast_to=object)\nwhile job[", 1)

    namespace: dict = {}
    exec(compile(example, "docs/api.md", "exec"), namespace)

    job, printed = namespace["job"], capsys.readouterr().out
    if cancel_it:
        assert job["state"] == "cancelled" and job["final"] is None and job["reason"]
        assert printed.rstrip("\n").endswith(f"The job cancelled: {job['reason']}")
    else:
        assert job["state"] == "succeeded", job["reason"]
        assert printed.endswith(job["final"]["answer"] + "\n") and "The job" not in printed
