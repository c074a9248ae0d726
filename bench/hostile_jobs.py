"""The job cases of bench/hostile_request.py: what one key can try against /v1/video/jobs, each set up first
(not measured) and then sent (measured, with a simple request beside it).

- 64 event streams from one key, on one running job;
- a GET of a job of 2,000 recorded segments whose caller's schema let the model write the most events
  (``jobs.max_events_per_segment`` of them, minimal), stored directly in the app's job store;
- 3,000 create-then-delete cycles (set up), then a list of the key's jobs (measured);
- 30 parallel job POSTs;
- a stream of 300 requests with a wrong key while a job runs: the job's segments recorded meanwhile, and
  whether the runner saw interactive load.
"""

import concurrent.futures
import dataclasses
import io
import pathlib
import threading
import time
from typing import Any, Callable

import av
import httpx
import numpy as np

from deployments.files.store import FileStore, owner_of
from deployments.jobs.kinds.video_timeline import DEFAULT_EVENTS_SCHEMA, schema_json
from deployments.jobs.records import JobRecord, JobState, new_job_id
from deployments.jobs.store import JobStore

KEY = "vd-bench-hostile-key-0001"
MANY_STREAMS = 64
BIG_JOB_SEGMENTS = 2000
CYCLES = 3000
PARALLEL_POSTS = 30
WRONG_KEYS = 300


@dataclasses.dataclass
class JobCase:
    name: str
    setup: Callable[[httpx.Client], Any]  # not measured; its value goes to run
    run: Callable[[httpx.Client, Any], tuple[str, str]]  # measured: (status summary, message)


def long_video_bytes(seconds: int = 600) -> bytes:
    """Ten minutes at one small frame a second: a job of many segments that costs little to upload."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=1)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(seconds):
            pixels = np.full((48, 64, 3), (index * 7) % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def _statuses(codes: list[int | str]) -> str:
    counted: dict[str, int] = {}
    for code in codes:
        counted[str(code)] = counted.get(str(code), 0) + 1
    return ", ".join(f"{count} x {code}" for code, count in sorted(counted.items()))


def _upload(client: httpx.Client, video: bytes) -> str:
    response = client.post("/v1/files", data={"purpose": "vision"}, files={"file": ("ten.mp4", video, "video/mp4")})
    response.raise_for_status()
    return response.json()["id"]


def _start(client: httpx.Client, file_id: str, **fields: Any) -> httpx.Response:
    return client.post("/v1/video/jobs", json={"file_id": file_id, "question": "What happens?", **fields})


def _cancel_all(client: httpx.Client) -> None:
    for job in client.get("/v1/video/jobs").json()["data"]:
        if job["state"] in ("queued", "running", "finalizing"):
            client.delete(f"/v1/video/jobs/{job['id']}")


def job_cases(store_url: str, video: bytes) -> list[JobCase]:
    def running_job(client: httpx.Client) -> str:
        _cancel_all(client)
        response = _start(client, _upload(client, video), segment_s=5, frames=2)
        response.raise_for_status()
        return response.json()["id"]

    def job_alone(client: httpx.Client, job_id: str) -> tuple[str, str]:
        time.sleep(2.0)  # what a running job alone does to the simple request beside it: the job cases' baseline
        progress = client.get(f"/v1/video/jobs/{job_id}").json()["progress"]
        _cancel_all(client)
        return "-", f"the job recorded {progress['done'] + progress['failed']} segments; nothing else was sent"

    def cheap_burst(count: int) -> Callable[[httpx.Client, Any], tuple[str, str]]:
        """``count`` GETs of the cheapest keyed route at once: what that many requests cost through Serve here."""
        def burst(client: httpx.Client, _: Any) -> tuple[str, str]:
            def get(_: int) -> int:
                with httpx.Client(base_url=client.base_url, headers=client.headers, timeout=60) as each:
                    return each.get("/v1/models").status_code

            with concurrent.futures.ThreadPoolExecutor(count) as pool:
                return _statuses(list(pool.map(get, range(count)))), "the floor the burst cases below stand on"

        return burst

    def many_streams(client: httpx.Client, job_id: str) -> tuple[str, str]:
        opened: list[int] = []
        release = threading.Event()

        def stream(_: int) -> None:
            with httpx.Client(base_url=client.base_url, headers=client.headers, timeout=60) as each:
                try:
                    with each.stream("GET", f"/v1/video/jobs/{job_id}/events") as response:
                        opened.append(response.status_code)
                        if response.status_code == 200:
                            for _ in response.iter_lines():  # read, as a client does, until let go
                                if release.is_set():
                                    break
                except httpx.TimeoutException:
                    opened.append("no answer")

        with concurrent.futures.ThreadPoolExecutor(MANY_STREAMS) as pool:
            futures = [pool.submit(stream, index) for index in range(MANY_STREAMS)]
            while len(opened) < MANY_STREAMS and not all(future.done() for future in futures):
                time.sleep(0.05)
            time.sleep(1.0)  # settled: what is held now is held for the job's life
            started = time.perf_counter()
            try:
                chat_status: int | str = client.post("/v1/chat/completions", timeout=30, json={
                    "messages": [{"role": "user", "content": "Describe a quiet kitchen."}], "max_tokens": 8}).status_code
            except httpx.TimeoutException:
                chat_status = "no answer"
            chat_s = time.perf_counter() - started
            release.set()
            for future in futures:
                future.result()
        _cancel_all(client)
        return _statuses(opened), f"a one-line chat while the streams are held: {chat_status} in {chat_s:.2f} s"

    def big_job(client: httpx.Client) -> str:
        store = JobStore(FileStore(store_url))
        job = JobRecord(
            id=new_job_id(), owner=owner_of(KEY), file_id="file-" + "0" * 24, filename="long.mp4", file_sha256="0" * 64,
            question="What happens?", duration_s=BIG_JOB_SEGMENTS * 5.0, segment_s=5.0, frames_per_segment=8, fps=None,
            json_schema=schema_json(DEFAULT_EVENTS_SCHEMA), custom_schema=True, max_tokens=384, final_max_tokens=64,
            temperature=0.0, seed=None, segments=BIG_JOB_SEGMENTS, created_at=time.time(),
        )
        store.create(job)
        thumbnail = "data:image/jpeg;base64," + "A" * 5000  # the size of a 160 px JPEG's
        for index in range(BIG_JOB_SEGMENTS):
            start = index * 5.0
            events = [{"time_s": start + slot * 0.1, "description": "", "frame_s": start, "frame": slot % 8,
                       "segment": index} for slot in range(32)]
            result = {"index": index, "start_s": start, "end_s": start + 5.0, "state": "done",
                      "answer": {"events": [{"time_s": 0, "description": ""}] * 32}, "text": "x" * 700,
                      "parse_error": None, "finish_reason": "stop", "events": events, "events_dropped": 0,
                      "thumbnail_frame": 4, "frames": {"count": 8, "timestamps_s": [start] * 8, "substituted": 0},
                      "timings": {"decode_s": 0.1, "inference_s": 0.5}}
            try:
                typed = _typed(result)
                stored = store.put_segment(job, typed, [thumbnail] * 8)
                job = job.counted(typed, stored or 0)
            except TypeError:  # the code before the bounds (a "before" run): thumbnails inside the result
                store.put_segment(job, {**result, "thumbnail": thumbnail,
                                        "events": [{**event, "thumbnail": thumbnail} for event in events]})
        done = dataclasses.replace(job, state=JobState.SUCCEEDED, reason="done", finished_at=time.time(),
                                   expires_at=time.time() + 3600, final_answer="A quiet ten hours.")
        store.save(done)
        return job.id

    def get_big_job(client: httpx.Client, job_id: str) -> tuple[str, str]:
        response = client.get(f"/v1/video/jobs/{job_id}")
        body = response.json()
        return str(response.status_code), (f"{len(response.content)} bytes: {len(body['segments'])} segments, "
                                            f"{len(body['timeline'])} events, next_after {body.get('next_after')}")

    def cycles(client: httpx.Client) -> str:
        file_id = _upload(client, video)
        codes = []
        started = time.perf_counter()
        for _ in range(CYCLES):
            response = _start(client, file_id, segment_s=600)
            codes.append(response.status_code)
            if response.status_code == 202:
                client.delete(f"/v1/video/jobs/{response.json()['id']}")
        return f"{_statuses(codes)} in {time.perf_counter() - started:.0f} s"

    def list_jobs(client: httpx.Client, cycled: str) -> tuple[str, str]:
        response = client.get("/v1/video/jobs")
        return str(response.status_code), f"{len(response.json()['data'])} jobs listed after the cycles ({cycled})"

    def parallel(client: httpx.Client) -> str:
        _cancel_all(client)
        time.sleep(61)  # a fresh minute of jobs.max_job_creations_per_minute after the cycles
        return _upload(client, video)

    def parallel_posts(client: httpx.Client, file_id: str) -> tuple[str, str]:
        def post(_: int) -> int:
            with httpx.Client(base_url=client.base_url, headers=client.headers, timeout=60) as each:
                return _start(each, file_id, segment_s=600).status_code

        with concurrent.futures.ThreadPoolExecutor(PARALLEL_POSTS) as pool:
            codes = list(pool.map(post, range(PARALLEL_POSTS)))
        created = sum(1 for code in codes if code == 202)
        _cancel_all(client)
        return _statuses(codes), f"{created} created: jobs.max_active_jobs_per_key, never more"

    def wrong_keys(client: httpx.Client, job_id: str) -> tuple[str, str]:
        looks, codes = [], []
        recorded = client.get(f"/v1/video/jobs/{job_id}").json()["progress"]
        started = time.perf_counter()
        with httpx.Client(base_url=client.base_url, timeout=30) as anyone:
            for index in range(WRONG_KEYS):
                codes.append(anyone.post("/v1/chat/completions", headers={"authorization": "Bearer wrong"},
                                         json={"messages": [{"role": "user", "content": "hi"}]}).status_code)
                if index % 30 == 0:
                    looks.append(client.get("/v1/memory").json()["jobs"]["under_interactive_load"])
        seconds = time.perf_counter() - started
        after = client.get(f"/v1/video/jobs/{job_id}").json()["progress"]
        landed = after["done"] + after["failed"] - recorded["done"] - recorded["failed"]
        _cancel_all(client)
        seen = "".join("L" if loaded else "-" for loaded in looks)
        return _statuses(codes), (f"the job recorded {landed} segments in {seconds:.1f} s meanwhile; interactive load "
                                  f"seen by the runner, a look each 30 requests: {seen} (L: the simple request "
                                  "beside, and 2 s after it)")

    return [
        JobCase("baseline: a job running, nothing else sent", running_job, job_alone),
        JobCase(f"baseline: {MANY_STREAMS} GET /v1/models at once", lambda client: None, cheap_burst(MANY_STREAMS)),
        JobCase(f"{MANY_STREAMS} event streams from one key", running_job, many_streams),
        JobCase(f"GET of a {BIG_JOB_SEGMENTS}-segment job (most events a segment)", big_job, get_big_job),
        JobCase(f"{CYCLES} create-then-delete cycles, then a list", cycles, list_jobs),
        JobCase(f"baseline: {PARALLEL_POSTS} GET /v1/models at once", lambda client: None, cheap_burst(PARALLEL_POSTS)),
        JobCase(f"{PARALLEL_POSTS} parallel job POSTs", parallel, parallel_posts),
        JobCase(f"{WRONG_KEYS} requests with a wrong key during a job", running_job, wrong_keys),
    ]


def store_folder(workdir: pathlib.Path) -> str:
    return (workdir / "store").as_uri()


def _typed(result: dict[str, Any]) -> Any:
    """The result as the checkout under test records it: typed (deployments.jobs.results), or a dict before that."""
    try:
        from deployments.jobs.results import SegmentResult
    except ImportError:
        return result
    return SegmentResult.from_json(result)
