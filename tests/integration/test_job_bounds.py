"""Jobs that a hostile or careless client cannot turn against the server, through real Serve and HTTP: event
streams bounded per key and per job and ended after their time (resumed with Last-Event-ID), refused requests
that do not count as interactive load, jobs kept per key within a bound (DELETE removes an ended one), job
creation rate-limited, 30 parallel job POSTs within the active-job quota, a job whose file goes mid-job failed at
once, a schema that nests past the parser a 400, schema compiles past the replica's bound turned away at once,
and an ingress that leaves no load figure behind in the GCS.

The app: the CPU group on one replica, the job runner, API keys (one per test, so that quotas do not mix), jobs
kept in a store folder of the test's.
"""

import concurrent.futures
import contextlib
import json
import threading
import time

import httpx
import media_factory
import psutil
import pytest
from job_requests import start_job as _start
from job_requests import upload_video
from polling import wait_for_condition
from ray import serve

from integration.conftest import TEST_APP_ARGS, deploy

pytestmark = pytest.mark.integration

APP = "job-bounds"
KEYS = {name: f"vd-bounds-key-{name}-{index:04d}" for index, name in enumerate(
    ("streams", "resume", "load", "kept", "rate", "parallel", "gone", "schema"))}
VIDEO = media_factory.video_bytes("mp4", num_frames=240, fps=2, gop=20)  # two minutes
LONG_VIDEO = media_factory.video_bytes("mp4", num_frames=480, fps=2, gop=20)  # four
STREAM_S = 3.0
MAX_ACTIVE = 2
MAX_KEPT = 3
CREATIONS_PER_MINUTE = 12


@pytest.fixture(scope="module")
def bounds_url(http_port, test_root):
    keys_file = test_root / "bounds-api-keys"
    keys_file.write_text("\n".join(KEYS.values()) + "\n")
    args = {
        "limits": {**TEST_APP_ARGS["limits"], "max_prompt_tokens": 400, "max_schema_compiles": 1},
        "gpu_group": {"enabled": False},
        "cpu_group": {"num_cpus": 0.5},
        "auth": {"api_keys_file": str(keys_file)},
        "files": {"store_url": (test_root / "bounds-store").as_uri()},
        "ingress": {"num_cpus": 0.25, "upload_dir": TEST_APP_ARGS["ingress"]["upload_dir"]},
        "jobs": {
            "min_segment_s": 2, "default_segment_s": 10, "max_running_segments": 2, "max_running_segments_per_job": 1,
            "max_active_jobs_per_key": MAX_ACTIVE, "max_jobs_per_key": MAX_KEPT,
            "max_job_creations_per_minute": CREATIONS_PER_MINUTE, "max_event_streams_per_key": 3,
            "max_event_streams_per_job": 2, "max_event_stream_s": STREAM_S, "scan_period_s": 0.5,
            "decode_num_cpus": 0.1,
        },
    }
    url = deploy(args, http_port, name=APP, route_prefix="/bounds")
    yield url
    if APP in serve.status().applications:
        serve.delete(APP)


def _client(url: str, name: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"authorization": f"Bearer {KEYS[name]}"}, timeout=60)


def _upload(client: httpx.Client, video: bytes = VIDEO) -> str:
    return upload_video(client, video)


def _read_stream(
    client: httpx.Client, job_id: str, last_id: str | None = None, *, leave_after_segments: int | None = None
) -> tuple[list[str], list[tuple]]:
    """One connection's lines before the first event, and its events as (id, name, payload); the client leaves
    after ``leave_after_segments`` segment events, when given."""
    headers = {"last-event-id": last_id} if last_id is not None else {}
    head, events, block = [], [], {}
    with client.stream("GET", f"/v1/video/jobs/{job_id}/events", headers=headers, timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line:
                if "data" in block:
                    events.append((block.get("id"), block.get("event"), json.loads(block["data"])))
                block = {}
                if leave_after_segments is not None and sum(name == "segment" for _, name, _ in events) >= leave_after_segments:
                    break
                continue
            field, _, value = line.partition(": ")
            if not events and "data" not in block and field in ("retry", ""):
                head.append(line)
            block[field] = value
    return head, events


def test_event_streams_are_bounded_per_job_and_per_key_and_a_chat_is_answered_beside_them(bounds_url):
    with _client(bounds_url, "streams") as client:
        file_id = _upload(client)
        first, second = (_start(client, file_id, segment_s=5) for _ in range(2))
        with contextlib.ExitStack() as stack:
            def hold(job: dict) -> None:
                opened = stack.enter_context(_client(bounds_url, "streams"))
                assert stack.enter_context(opened.stream("GET", f"/v1/video/jobs/{job['id']}/events")).status_code == 200

            hold(first)
            hold(first)
            per_job = client.get(f"/v1/video/jobs/{first['id']}/events")
            hold(second)
            per_key = client.get(f"/v1/video/jobs/{second['id']}/events")
            chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert per_job.status_code == 429 and per_job.json()["error"]["code"] == "too_many_event_streams"
        assert "jobs.max_event_streams_per_job" in per_job.json()["error"]["message"] and per_job.headers["retry-after"]
        assert per_key.status_code == 429 and "jobs.max_event_streams_per_key" in per_key.json()["error"]["message"]
        assert chat.status_code == 200
        # Closed streams give their slots back.
        wait_for_condition(lambda: _read_stream(client, second["id"])[1], timeout_s=30)
        for job in (first, second):
            assert client.delete(f"/v1/video/jobs/{job['id']}").status_code == 200


def test_a_stream_ends_after_its_time_and_a_client_resumes_it_with_last_event_id(bounds_url):
    with _client(bounds_url, "resume") as client:
        job = _start(client, _upload(client, LONG_VIDEO), segment_s=2, frames=8)  # 120 segments, one at a time: longer than a stream
        connections, segments, last_id, done = [], {}, None, None
        while done is None and len(connections) < 200:
            # The client itself leaves its first stream after 3 segments; the server ends the others.
            head, events = _read_stream(client, job["id"], last_id, leave_after_segments=3 if not connections else None)
            connections.append((last_id, head, events))
            for event_id, name, payload in events:
                if name == "segment":
                    # A resumed stream sends nothing at or below the id it was given.
                    assert last_id is None or payload["index"] > int(last_id)
                    segments.setdefault(payload["index"], payload)
                    last_id = event_id
                elif name == "done":
                    done = payload
    assert done is not None and done["state"] == "succeeded"
    assert [name for _, name, _ in connections[0][2]].count("segment") == 3  # left by the client, resumed after
    ended_by_server = [events for _, _, events in connections[1:-1] if all(name != "done" for _, name, _ in events)]
    assert ended_by_server, f"the job took {done['timings']['wall_s']} s: no stream outlived jobs.max_event_stream_s"
    assert all(head[0] == "retry: 1000" for _, head, _ in connections)
    assert sorted(segments) == list(range(done["progress"]["segments"]))
    with _client(bounds_url, "resume") as client:
        for bad in ("abc", "1e3", "-7", "99999999"):
            refused = client.get(f"/v1/video/jobs/{job['id']}/events", headers={"last-event-id": bad})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "last-event-id", bad
        # Refused before any slot was taken: a stream of the job still opens, and ends with the job's done.
        assert _read_stream(client, job["id"])[1][-1][1] == "done"


def test_refused_requests_are_not_interactive_load_and_jobs_keep_moving(bounds_url):
    with _client(bounds_url, "load") as client:
        job = _start(client, _upload(client), segment_s=2, frames=2)
        stop = threading.Event()
        statuses: list[int] = []

        def refused_requests() -> None:
            with httpx.Client(base_url=bounds_url, timeout=30) as anyone, _client(bounds_url, "load") as keyed:
                while not stop.is_set():
                    chat = {"messages": [{"role": "user", "content": "Hi"}]}
                    statuses.append(anyone.post("/v1/chat/completions", json=chat,
                                                headers={"authorization": "Bearer wrong"}).status_code)
                    statuses.append(keyed.post("/v1/chat/completions", json={"messages": []}).status_code)
                    statuses.append(keyed.post("/v1/analyze", files=[("question", (None, "?"))]).status_code)

        flood = threading.Thread(target=refused_requests)
        flood.start()
        try:
            views = []
            for _ in range(12):
                views.append(client.get("/v1/memory").json()["jobs"])
                time.sleep(0.5)
        finally:
            stop.set()
            flood.join()
        assert statuses and set(statuses) <= {400, 401, 422}
        assert not any(view["under_interactive_load"] for view in views), views
        assert all(view["max_running_segments"] == 2 for view in views)
        progressed = client.get(f"/v1/video/jobs/{job['id']}").json()
        assert progressed["progress"]["done"] + progressed["progress"]["failed"] >= 1
        assert client.delete(f"/v1/video/jobs/{job['id']}").status_code == 200


def test_jobs_kept_per_key_are_bounded_and_delete_removes_an_ended_job(bounds_url, test_root):
    with _client(bounds_url, "kept") as client:
        file_id = _upload(client)
        created = []
        for _ in range(MAX_KEPT + 4):
            job = _start(client, file_id, segment_s=60)
            created.append(job["id"])
            cancelled = client.delete(f"/v1/video/jobs/{job['id']}")
            assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        time.sleep(1.5)  # three scans: a runner that took a job must not have revived it
        listed = client.get("/v1/video/jobs").json()["data"]
        assert [job["id"] for job in listed] == created[::-1][:MAX_KEPT]  # the oldest ended ones were evicted
        assert {job["state"] for job in listed} == {"cancelled"}
        owner_folders = [path for path in (test_root / "bounds-store").glob("*/jobs/job-*")
                         if path.name in created]
        assert len(owner_folders) == MAX_KEPT

        deleted = client.delete(f"/v1/video/jobs/{created[-1]}")
        assert deleted.status_code == 200 and deleted.json() == {"id": created[-1], "object": "video.job", "deleted": True,
                                                                 "state": "cancelled"}
        assert client.get(f"/v1/video/jobs/{created[-1]}").status_code == 404
        assert len(client.get("/v1/video/jobs").json()["data"]) == MAX_KEPT - 1


def test_job_creation_is_rate_limited_per_key(bounds_url):
    with _client(bounds_url, "rate") as client, _client(bounds_url, "gone") as other:
        file_id = _upload(client)
        statuses = []
        for _ in range(CREATIONS_PER_MINUTE + 1):
            response = client.post("/v1/video/jobs", json={"file_id": file_id, "question": "?", "segment_s": 60})
            statuses.append(response.status_code)
            if response.status_code == 202:
                client.delete(f"/v1/video/jobs/{response.json()['id']}")
        refused = client.post("/v1/video/jobs", json={"file_id": file_id, "question": "?", "segment_s": 60})
        other_key = other.get("/v1/video/jobs")
    assert statuses == [202] * CREATIONS_PER_MINUTE + [429]
    assert refused.json()["error"]["code"] == "rate_limited" and 1 <= int(refused.headers["retry-after"]) <= 60
    assert "jobs.max_job_creations_per_minute" in refused.json()["error"]["message"]
    assert other_key.status_code == 200


def test_thirty_parallel_job_posts_stay_within_the_active_job_quota(bounds_url):
    with _client(bounds_url, "parallel") as client:
        file_id = _upload(client)
        running = _start(client, file_id, segment_s=2)

        def post(_: int) -> httpx.Response:
            with _client(bounds_url, "parallel") as each:
                return each.post("/v1/video/jobs", json={"file_id": file_id, "question": "?", "segment_s": 60})

        with concurrent.futures.ThreadPoolExecutor(30) as pool:
            responses = list(pool.map(post, range(30)))
        statuses = sorted(response.status_code for response in responses)
        accepted = {response.json()["id"] for response in responses if response.status_code == 202}
        kept = client.get("/v1/video/jobs").json()["data"]  # in any state: an accepted job may have ended already
        codes = {response.json()["error"]["code"] for response in responses if response.status_code == 429}
        for job in kept:
            client.delete(f"/v1/video/jobs/{job['id']}")
    assert statuses == [202] * (MAX_ACTIVE - 1) + [429] * (31 - MAX_ACTIVE)
    assert codes <= {"job_quota_exceeded", "rate_limited"} and "job_quota_exceeded" in codes
    # The refused posts left no job behind: the key holds the running one and the accepted ones, nothing else.
    assert {job["id"] for job in kept} == accepted | {running["id"]}


def test_a_job_whose_file_goes_mid_job_fails_at_once(bounds_url):
    with _client(bounds_url, "gone") as client:
        file_id = _upload(client, LONG_VIDEO)
        job = _start(client, file_id, segment_s=2, frames=8)  # 120 segments: far from done when the file goes
        wait_for_condition(lambda: client.get(f"/v1/video/jobs/{job['id']}").json()["progress"]["done"] >= 1, timeout_s=120)
        assert client.delete(f"/v1/files/{file_id}").status_code == 200
        ended = wait_for_condition(
            lambda: (body := client.get(f"/v1/video/jobs/{job['id']}").json())["state"] in ("failed", "succeeded") and body,
            timeout_s=60)
    assert ended["state"] == "failed" and "went mid-job" in ended["reason"], ended["reason"]
    assert ended["progress"]["done"] + ended["progress"]["failed"] < ended["progress"]["segments"]


def test_a_schema_nested_past_the_parser_is_a_400_and_the_server_stays_up(bounds_url):
    with _client(bounds_url, "schema") as client:
        file_id = _upload(client)
        fields = {"file_id": file_id, "question": "?", "json_schema": "[" * 1200}
        response = client.post("/v1/analyze", files=[(name, (None, value)) for name, value in fields.items()])
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "json_schema" and "nests deeper" in response.json()["error"]["message"]
        assert client.get("/v1/models").status_code == 200


def _slow_schema(name: str) -> dict:
    """About 200 bytes that compile for seconds (two patterns of 480 repeated groups); a new name each, so no cache
    knows it."""
    pattern = {"type": "string", "pattern": "^([a-z]{1,50}[0-9]{1,50}){1,480}$"}
    schema = {"type": "object", "properties": {f"{name}-a": pattern, f"{name}-b": pattern}}
    return {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
            "response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}}


def _compiles_running() -> int:
    """Compiles running on this machine: the grammar compile servers' children (one forked per compile)."""
    running = 0
    for process in psutil.process_iter(["cmdline"]):
        if "models.decoding.grammar_server" in " ".join(process.info["cmdline"] or ()):
            with contextlib.suppress(psutil.NoSuchProcess):
                running += len(process.children())
    return running


def test_schema_compiles_past_the_replica_s_bound_are_turned_away_at_once(bounds_url):
    with _client(bounds_url, "schema") as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        warm = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
                                                         "response_format": {"type": "json_object"}})
        assert warm.status_code == 200  # the compile server is up: what follows times compiles, not its start
        first = pool.submit(client.post, "/v1/chat/completions", json=_slow_schema("first"))
        wait_for_condition(lambda: _compiles_running() >= 1, timeout_s=30, interval_s=0.02)  # limits.max_schema_compiles: 1
        asked = time.monotonic()
        second = client.post("/v1/chat/completions", json=_slow_schema("second"))
        waited_s = time.monotonic() - asked
        refused = first.result()
        served = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert second.status_code == 503 and second.json()["error"]["code"] == "overloaded", second.text
    assert "limits.max_schema_compiles" in second.json()["error"]["message"] and second.headers["retry-after"]
    assert waited_s < 1.0  # never queued behind the running compile
    assert refused.status_code == 400 and "limits.max_schema_compile_s" in refused.json()["error"]["message"]
    assert served.status_code == 200


def test_a_deleted_ingress_leaves_no_interactive_load_figure_in_the_gcs(bounds_url):
    from ray.experimental import internal_kv

    from deployments.routing.job_backlog import KV_NAMESPACE

    def figures() -> list[bytes]:
        return internal_kv._internal_kv_list(f"interactive:{APP}:", namespace=KV_NAMESPACE)

    with _client(bounds_url, "schema") as client:
        assert client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                         "max_tokens": 2}).status_code == 200
    wait_for_condition(figures, timeout_s=10)  # published while the chat was recent
    serve.delete(APP)
    assert figures() == []
