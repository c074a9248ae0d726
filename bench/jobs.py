"""Long videos as jobs: the job machinery's overhead, flat memory, interactive latency beside a job, failures.

One local Ray instance, the built-in tiny model on two CPU-group replicas (the GPU group off), the job runner,
files and jobs in a folder store, the frame caches off (both paths decode every segment). The videos are real
720p H.264 files written with PyAV (1 frame a second, a keyframe every 10 s; kept in bench/results/ for the
next run):

1. **overhead**: a 1-hour video, 60 segments of 60 s at 8 frames. The baseline is a client sending the same 60
   requests itself (``/v1/analyze`` with ``file_id``, ``start_s``/``end_s``, 8 frames, the job's events schema,
   ``max_tokens`` and seeds), as many at once as the job runs (``jobs.max_running_segments``); then the job.
   Ratio: the job's segments (POST to the last segment recorded) over the baseline's wall time (target 1.1x);
   the job's final answer is one more request, reported beside it.
2. **interactive latency**: 40 chat requests one after another, idle, then while a job runs: p50 and p95
   (target: p50 within 1.5x).
3. **flat memory**: a fresh app for a 10-minute and a 3-hour video; while each job runs, the peak RSS of the
   ingress, the job runner, each CPU replica and the decode tasks, sampled every 0.2 s (psutil, by the titles
   Ray gives the processes; read only). Ratio 3 hours over 10 minutes (target at most 1.2x).
4. **failures mid-job** (1-hour video): both CPU replicas killed, the ingress replica killed (each when 10
   segments are recorded): the job completes, every segment recorded once; a job deleted: seconds until no
   segment of it runs and the last one recorded.

The multi-node figure (a job with the GPU node lost mid-job) is ``bench/cluster.py``'s ``job_gpu_node_lost``.

Usage: .venv/bin/python -m bench.jobs [--skip-memory] [--json] [--plot-dir docs]
"""

import argparse
import concurrent.futures
import json
import logging
import pathlib
import statistics
import sys
import threading
import time
from typing import Any, Callable

import av
import httpx
import numpy as np
import psutil
import ray
from ray import serve

from bench.local_serve import local_serve  # noqa: I001 - sets Ray's environment first
from bench.plots import DOCS_DIR, jobs_chart
from bench.polling import wait_for
from deployments.app import build_app
from deployments.edge.video_jobs import JOB_PAGE_MAX
from deployments.jobs.kinds.video_timeline import DEFAULT_EVENTS_SCHEMA

logger = logging.getLogger("bench.jobs")
APP = "jobs-bench"
VIDEOS = pathlib.Path(__file__).resolve().parent / "results" / "videos"
SEGMENT_S = 60
FRAMES = 8
SEGMENT_TOKENS = 384
RUNNING_SEGMENTS = 4
CHAT = {"messages": [{"role": "user", "content": "Describe a quiet kitchen."}], "max_tokens": 16}
PROCESSES = {"ingress": f"ServeReplica:{APP}:Ingress", "job runner": f"ServeReplica:{APP}:JobRunner",
             "cpu replica": f"ServeReplica:{APP}:cpu_group", "decode task": "ray::decode_segment"}


def long_video(seconds: int, *, fps: int = 1, width: int = 1280, height: int = 720, gop_s: int = 10) -> pathlib.Path:
    """A 720p H.264 MP4 of ``seconds``: a gradient that pans and a box that moves (kept for the next run)."""
    path = VIDEOS / f"{seconds}s-{width}x{height}-{fps}fps.mp4"
    if path.exists():
        return path
    VIDEOS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    ramp_x, ramp_y = np.linspace(0, 255, width), np.linspace(0, 255, height)
    base = np.stack([np.add.outer(ramp_y * 0, ramp_x), np.add.outer(ramp_y, ramp_x * 0),
                     np.add.outer(ramp_y, ramp_x) / 2], axis=-1).astype(np.uint8)
    partial = path.with_suffix(".partial.mp4")
    with av.open(str(partial), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.gop_size = gop_s * fps
        stream.codec_context.options = {"preset": "ultrafast", "x264-params": "scenecut=0"}
        for index in range(seconds * fps):
            pixels = np.roll(base, index * 16, axis=1)
            left = (index * 37) % (width - 120)
            pixels[300:420, left:left + 120] = ((index * 53) % 256, 255 - (index * 29) % 256, 128)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    partial.rename(path)
    logger.info("wrote %s (%d MB) in %.0f s", path, path.stat().st_size // 2**20, time.monotonic() - started)
    return path


def app_args(workdir: pathlib.Path) -> dict[str, Any]:
    (workdir / "uploads").mkdir(exist_ok=True)
    return {
        "limits": {"video_frames": FRAMES, "max_video_frames": FRAMES, "max_upload_bytes": 1024 * 2**20},
        "gpu_group": {"enabled": False},
        "cpu_group": {"num_cpus": 0.5, "autoscaling": {"min_replicas": 2, "max_replicas": 2}},
        "files": {"store_url": (workdir / "store").as_uri(), "frame_cache_bytes": 0},
        "ingress": {"num_cpus": 0.25, "upload_dir": str(workdir / "uploads")},
        "jobs": {"max_running_segments": RUNNING_SEGMENTS, "max_running_segments_per_job": RUNNING_SEGMENTS,
                 "scan_period_s": 1.0},
    }


def deploy(base_url: str, workdir: pathlib.Path) -> None:
    serve.run(build_app(app_args(workdir)), name=APP, route_prefix="/")
    _wait(lambda: httpx.get(f"{base_url}/readyz", timeout=10).json()["groups"]["cpu"]["ready_replicas"] == 2, 300,
          "two CPU replicas ready")


def _wait(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    return wait_for(condition, timeout_s, what, interval_s=interval_s, tolerated=(httpx.HTTPError, KeyError, ValueError))


def upload(client: httpx.Client, path: pathlib.Path) -> str:
    with open(path, "rb") as file:
        response = client.post("/v1/files", data={"purpose": "vision"}, files={"file": (path.name, file, "video/mp4")},
                               timeout=600)
    response.raise_for_status()
    return response.json()["id"]


def run_job(client: httpx.Client, file_id: str, *, seed: int = 1, on_segment: Callable[[int], None] | None = None) -> dict:
    """POST a job and follow its events: seconds to the last segment and to the end, and the job as it ended."""
    started = time.monotonic()
    response = client.post("/v1/video/jobs", json={
        "file_id": file_id, "question": "What happens?", "segment_s": SEGMENT_S, "frames": FRAMES,
        "max_tokens": SEGMENT_TOKENS, "seed": seed})
    response.raise_for_status()
    job_id = response.json()["id"]
    segments = 0
    last_segment_s = None
    ended: dict = {}
    with client.stream("GET", f"/v1/video/jobs/{job_id}/events", timeout=3600) as events:
        name = None
        for line in events.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                if name == "segment":
                    segments += 1
                    last_segment_s = time.monotonic() - started
                    if on_segment:
                        on_segment(segments)
                elif name == "done":
                    ended = json.loads(line.removeprefix("data: "))
    return {"id": job_id, "segments_s": last_segment_s, "total_s": time.monotonic() - started, "job": ended}


def baseline(client: httpx.Client, file_id: str, duration_s: float, *, seed: int = 1) -> float:
    """The job's segment requests sent by a client, ``RUNNING_SEGMENTS`` at once: the wall time."""
    windows = [(start, min(start + SEGMENT_S, duration_s)) for start in range(0, int(duration_s), SEGMENT_S)]

    def ask(index: int) -> None:
        start, end = windows[index]
        fields = {"file_id": file_id, "question": "What happens?", "start_s": str(start), "end_s": str(end),
                  "frames": str(FRAMES), "max_tokens": str(SEGMENT_TOKENS), "seed": str(seed + index),
                  "json_schema": json.dumps(DEFAULT_EVENTS_SCHEMA)}
        response = client.post("/v1/analyze", files={name: (None, value) for name, value in fields.items()}, timeout=600)
        response.raise_for_status()

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=RUNNING_SEGMENTS) as pool:
        list(pool.map(ask, range(len(windows))))
    return time.monotonic() - started


def chat_latencies(client: httpx.Client, count: int = 40) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        client.post("/v1/chat/completions", json=CHAT, timeout=120).raise_for_status()
        latencies.append(time.perf_counter() - started)
    return latencies


def percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"p50_s": round(statistics.median(ordered), 4), "p95_s": round(ordered[int(0.95 * (len(ordered) - 1))], 4)}


class PeakRss:
    """The peak RSS of each kind of process (:data:`PROCESSES`), sampled every 0.2 s while the block runs: all of
    it (``peaks``), and its private part (``private_peaks``: RSS less the pages shared with other processes, which
    are libraries and Ray's object store, where every segment's frames pass through shared memory that the
    writing process keeps mapped)."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}
        self.private_peaks: dict[str, int] = {}
        self.private_at_start: dict[str, int] = {}  # each kind's first sample: what the job adds is the peak less it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for process in psutil.process_iter(["cmdline", "memory_info"]):
                title = " ".join(process.info["cmdline"] or ())
                memory_info = process.info["memory_info"]
                for kind, fragment in PROCESSES.items():
                    if fragment in title and memory_info is not None:
                        self.peaks[kind] = max(self.peaks.get(kind, 0), memory_info.rss)
                        private = memory_info.rss - memory_info.shared
                        self.private_peaks[kind] = max(self.private_peaks.get(kind, 0), private)
                        self.private_at_start.setdefault(kind, private)
            self._stop.wait(0.2)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._thread.join()


def _kill(fragment: str) -> None:
    """Every replica of the deployment (both CPU replicas: whatever segments are in flight die with them)."""
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith("SERVE_REPLICA") and f"{APP}#{fragment}" in actor["name"]:
            ray.kill(ray.get_actor(actor["name"], namespace="serve"), no_restart=True)


def _recorded(workdir: pathlib.Path, job_id: str) -> list[pathlib.Path]:
    return list((workdir / "store").glob(f"*/jobs/{job_id}/segments/[0-9][0-9][0-9][0-9][0-9].json"))


def _segments(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    """Every recorded segment of a job, page by page (the events stream's ``done`` carries the job without them)."""
    segments: list[dict[str, Any]] = []
    after = -1
    while after is not None:
        page = client.get(f"/v1/video/jobs/{job_id}", params={"after": after, "limit": JOB_PAGE_MAX}).json()
        segments += page["segments"]
        after = page["next_after"]
    return segments


def failures(client: httpx.Client, workdir: pathlib.Path, file_id: str) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for victim, fragment in (("both cpu replicas killed", "cpu_group"), ("ingress killed", "Ingress")):
        killed = threading.Event()

        def kill_at_ten(recorded: int, fragment: str = fragment, killed: threading.Event = killed) -> None:
            if recorded == 10 and not killed.is_set():
                killed.set()
                _kill(fragment)

        try:
            result = run_job(client, file_id, seed=11, on_segment=kill_at_ten)
        except httpx.HTTPError as error:  # the events stream ran through the killed ingress: follow by polling
            logger.info("%s: the events stream ended (%s); polling the job", victim, type(error).__name__)
            result = {"job": _wait_for_end(client, workdir)}
        job = result["job"]
        files = _recorded(workdir, job["id"])
        report[victim] = {
            "state": job["state"], "segments": job["progress"]["segments"], "done": job["progress"]["done"],
            "failed": job["progress"]["failed"], "recorded_files": len(files),
            "recorded_once": len(files) == len({path.name for path in files}) == job["progress"]["segments"],
            "segments_tried_again": sum(1 for segment in _segments(client, job["id"]) if segment.get("attempts", 1) > 1),
        }
        deploy_ready(client)
    response = client.post("/v1/video/jobs", json={"file_id": file_id, "question": "What happens?", "segment_s": SEGMENT_S,
                                                   "frames": FRAMES, "max_tokens": SEGMENT_TOKENS})
    job_id = response.json()["id"]
    _wait(lambda: len(_recorded(workdir, job_id)) >= 10, 600, "ten segments recorded")
    asked, asked_wall = time.monotonic(), time.time()
    answer = client.delete(f"/v1/video/jobs/{job_id}").json()
    answered_s = time.monotonic() - asked
    _wait(lambda: client.get("/v1/memory").json()["jobs"]["running_segments"] == 0, 60, "no segment running")
    stopped_s = time.monotonic() - asked
    recorded = _recorded(workdir, job_id)
    time.sleep(3)
    report["deleted"] = {
        "state": answer["state"], "delete_answered_s": round(answered_s, 3), "no_segment_running_s": round(stopped_s, 3),
        "recorded_at_delete": len(recorded), "recorded_3_s_later": len(_recorded(workdir, job_id)),
        # Negative: the last result was recorded before the delete.
        "last_recorded_after_delete_s": round(max(path.stat().st_mtime for path in recorded) - asked_wall, 3),
    }
    return report


def _wait_for_end(client: httpx.Client, workdir: pathlib.Path) -> dict:
    jobs = _wait(lambda: client.get("/v1/video/jobs").json()["data"], 120, "the job list")
    job_id = jobs[0]["id"]
    return _wait(lambda: (body := client.get(f"/v1/video/jobs/{job_id}").json())["state"] in ("succeeded", "failed")
                 and body, 900, "the job's end", interval_s=1.0)


def deploy_ready(client: httpx.Client) -> None:
    _wait(lambda: client.get("/readyz", timeout=10).json()["groups"]["cpu"]["ready_replicas"] == 2, 300, "two CPU replicas ready")


def memory(base_url: str, workdir: pathlib.Path, videos: dict[str, pathlib.Path]) -> dict[str, dict[str, int]]:
    peaks = {}
    for name, path in videos.items():
        serve.delete(APP)
        deploy(base_url, workdir)
        with httpx.Client(base_url=base_url, timeout=120) as client:
            file_id = upload(client, path)
            with PeakRss() as sampled:
                result = run_job(client, file_id)
            client.delete(f"/v1/files/{file_id}")
        peaks[name] = {"rss": sampled.peaks, "private": sampled.private_peaks, "private_at_start": sampled.private_at_start,
                       "segments": result["job"]["progress"]["segments"], "job_s": round(result["total_s"], 1)}
        logger.info("%s: %s", name, peaks[name])
    return peaks


def measure(base_url: str, workdir: pathlib.Path, hour: pathlib.Path, report: dict[str, Any], *, failures_too: bool) -> None:
    """The overhead, the interactive latency and (``failures_too``) the failures, on the 1-hour video."""
    with httpx.Client(base_url=base_url, timeout=120) as client:
        file_id = upload(client, hour)
        chat_latencies(client, 5)  # warm-up
        baseline_s = baseline(client, file_id, 3600)
        job = run_job(client, file_id)
        report["overhead"] = {
            "segments": job["job"]["progress"]["segments"], "baseline_s": round(baseline_s, 2),
            "job_segments_s": round(job["segments_s"], 2), "job_total_s": round(job["total_s"], 2),
            "ratio_segments": round(job["segments_s"] / baseline_s, 3),
            "ratio_with_final_answer": round(job["total_s"] / baseline_s, 3),
        }
        logger.info("overhead: %s", report["overhead"])
        idle = chat_latencies(client)
        running: dict = {}
        worker = threading.Thread(target=lambda: running.update(run_job(client, file_id, seed=5)), daemon=True)
        worker.start()
        _wait(lambda: client.get("/v1/memory").json()["jobs"]["running_segments"] > 0, 60, "the job running")
        during = chat_latencies(client)
        still_running = client.get("/v1/memory").json()["jobs"]["running_segments"] > 0
        worker.join()
        report["interactive"] = {
            "idle": percentiles(idle), "during_job": percentiles(during), "job_ran_throughout": still_running,
            "ratio_p50": round(statistics.median(during) / statistics.median(idle), 3),
            "ratio_p95": round(percentiles(during)["p95_s"] / percentiles(idle)["p95_s"], 3),
        }
        logger.info("interactive: %s", report["interactive"])
        if failures_too:
            report["failures"] = failures(client, workdir, file_id)
            logger.info("failures: %s", report["failures"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-memory", action="store_true", help="leave out the 10-minute and 3-hour memory runs")
    parser.add_argument("--skip-failures", action="store_true")
    parser.add_argument("--only-memory", action="store_true", help="the 10-minute and 3-hour memory runs alone")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot-dir", type=pathlib.Path, default=DOCS_DIR)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    hour = long_video(3600)
    videos = {} if args.skip_memory else {"10 minutes": long_video(600), "3 hours": long_video(3 * 3600)}
    report: dict[str, Any] = {}
    with local_serve(num_cpus=4) as (base_url, workdir):
        if not args.only_memory:
            deploy(base_url, workdir)
            measure(base_url, workdir, hour, report, failures_too=not args.skip_failures)
        if videos:
            peaks = memory(base_url, workdir, videos)
            short, long = peaks["10 minutes"], peaks["3 hours"]
            report["memory"] = {
                "peak_bytes": peaks,
                "ratio_3h_over_10min": {
                    figure: {kind: round(long[figure][kind] / short[figure][kind], 3)
                             for kind in PROCESSES if kind in short[figure] and kind in long[figure]}
                    for figure in ("rss", "private")
                },
                # What the job itself added to each process's private memory (its peak less its first sample).
                "private_growth_bytes": {
                    video: {kind: peaks[video]["private"][kind] - peaks[video]["private_at_start"][kind]
                            for kind in peaks[video]["private"]}
                    for video in peaks
                },
            }
            logger.info("memory ratios: %s", report["memory"]["ratio_3h_over_10min"])
    jobs_chart(report, args.plot_dir / "jobs.png")
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
