"""A small request that asks for a lot: each case of the two hardening audits, sent to the real app (default
limits) with a simple request beside it.

Per case: the status and time to the answer or refusal, the CPU seconds and peak RSS growth of the ingress
and of the CPU group's replica (its grammar compile server included), and the simple request's time against
its time alone (median of 5, measured first). The target: every case refused or answered within 2 s of CPU
and 300 MiB of growth, and the simple request within 2x.

The cases: 240 tiny clips (16 messages x 15), 30 clips asking 240 frames, a chunked 160 MiB body, 800,000
one-letter messages, 32 PNGs of 40 megapixels, a logit_bias key in superscript digits, a 200 MiB upload (a
small PNG then junk) named in 30 parts, an MKV of 100 4K streams, an hour of 4K behind one keyframe
(/v1/analyze), and three schemas: 190 objects deep, two patterns of 480 repeated groups (200 bytes), an enum
of 50,000 strings. Then the job cases (bench/hostile_jobs.py): 64 event streams from one key, a GET of a
2,000-segment job, 3,000 create-then-delete cycles then a list, 30 parallel job POSTs, and 300 requests with a
wrong key during a job. The app runs at its default limits, with one API key (every request carries it).

Usage: .venv/bin/python -m bench.hostile_request [--json] [--timeout-s 300] [--jobs-only]
"""

import argparse
import base64
import concurrent.futures
import contextlib
import dataclasses
import io
import json
import logging
import pathlib
import sys
import threading
import time
from typing import Any, Callable

import av  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from PIL import Image  # noqa: E402
from ray import serve  # noqa: E402

from bench.hostile_jobs import KEY, JobCase, job_cases, long_video_bytes, store_folder  # noqa: E402
from bench.hostile_media import many_stream_video, sparse_keyframe_video  # noqa: E402
from bench.local_serve import local_serve  # noqa: I001 - sets Ray's environment first
from deployments.app import build_app  # noqa: E402

logger = logging.getLogger("bench.hostile_request")


def _clip(width: int = 640, height: int = 480, frames: int = 8) -> str:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            pixels = np.full((height, width, 3), (index * 30) % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return "data:video/mp4;base64," + base64.b64encode(buffer.getvalue()).decode()


def _schema_request(schema: dict) -> dict:
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}


def _nested(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def _big_png_url() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8000, 5000)).save(buffer, format="PNG")  # 40 megapixels, about 120 KB
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _chunked_body(total_bytes: int):
    yield b'{"messages": "'
    for _ in range(total_bytes // 2**20):
        yield b"x" * 2**20


def _request(messages: int, parts: int, clip: str) -> dict:
    content = [{"type": "video_url", "video_url": {"url": clip}}] * parts
    return {"messages": [{"role": "user", "content": content}] * messages, "max_tokens": 4}


class _Process:
    """A Serve replica's process, found by the title Ray gives it (read only; nothing is signalled): its CPU
    seconds (its children's included: the grammar compile server and its compiles) and its peak RSS, sampled."""

    def __init__(self, title: str) -> None:
        for process in psutil.process_iter(["cmdline"]):
            if any(title in part for part in process.info["cmdline"] or ()):
                self.process = process
                break
        else:
            raise RuntimeError(f"No process titled {title}")
        self.peak_rss_bytes = 0
        self._sampling = threading.Event()

    def cpu_s(self) -> float:
        total = 0.0
        for process in [self.process, *self.process.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system + times.children_user + times.children_system
        return total

    def rss_bytes(self) -> int:
        return self.process.memory_info().rss

    @contextlib.contextmanager
    def sampling_peak(self):
        self.peak_rss_bytes = self.rss_bytes()
        self._sampling.set()

        def sample() -> None:
            while self._sampling.is_set():
                self.peak_rss_bytes = max(self.peak_rss_bytes, self.rss_bytes())
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield
        finally:
            self._sampling.clear()
            sampler.join()


def _simple_request_s(base_url: str, body: dict) -> float:
    started = time.perf_counter()
    httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=_AUTHORIZATION, timeout=300).raise_for_status()
    return time.perf_counter() - started


_AUTHORIZATION = {"authorization": f"Bearer {KEY}"}


def _send(client: httpx.Client, case: "Case", payload: Any) -> httpx.Response:
    if case.route == "/v1/analyze":
        return client.post(case.route, files=payload)
    return client.post(case.route, content=payload, headers={"content-type": "application/json"})


@dataclasses.dataclass
class Case:
    name: str
    body: Callable[[], Any]  # the payload, made just before it is sent
    route: str = "/v1/chat/completions"


def _cases(workdir: pathlib.Path, image_file_id: str | None) -> list[Case]:
    clip = _clip()
    big_png = _big_png_url()
    hour = sparse_keyframe_video(workdir / "hour.mp4", seconds=3600).read_bytes()
    streams_url = "data:video/x-matroska;base64," + base64.b64encode(
        many_stream_video(workdir / "streams.mkv").read_bytes()).decode()
    pattern = {"type": "string", "pattern": "^([a-z]{1,50}[0-9]{1,50}){1,480}$"}

    def chat(body: dict) -> Callable[[], bytes]:
        return lambda: json.dumps(body).encode()

    noise_png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (2200, 2200, 3), dtype=np.uint8)).save(noise_png, format="PNG")
    noise_url = "data:image/png;base64," + base64.b64encode(noise_png.getvalue()).decode()
    cases = [
        Case("legitimate: a 14 MiB PNG as a data URL (19 MiB body)", chat({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": noise_url}}, {"type": "text", "text": "What is this?"}]}],
            "max_tokens": 2})),
        Case("240 clips (16 x 15)", chat(_request(16, 15, clip))),
        Case("30 clips (2 x 15), 240 frames", chat(_request(2, 15, clip))),
        Case("chunked 160 MiB body", lambda: _chunked_body(160 * 2**20)),
        Case("800,000 one-letter messages", chat({"messages": [{"role": "user", "content": "a"}] * 800_000, "max_tokens": 2})),
        Case("32 PNGs of 40 megapixels", chat({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": big_png}}] * 16}] * 2, "max_tokens": 2})),
        Case("logit_bias key in superscript", chat({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                                   "logit_bias": {"\u00b2": 1}})),
        Case("MKV of 100 4K streams (2.5 MB)", chat({"messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": streams_url}}]}], "max_tokens": 2})),
        Case("an hour of 4K behind one keyframe (3.4 MB), analyze", lambda: [
            ("question", (None, "What happens?")), ("max_tokens", (None, "2")), ("frames", (None, "8")),
            ("video", ("hour.mp4", hour, "video/mp4"))], route="/v1/analyze"),
        Case("schema: 190 objects deep", chat(_schema_request(_nested(190)))),
        Case("schema: 2 patterns of 480 groups (200 bytes)", chat(_schema_request(
            {"type": "object", "properties": {"a": pattern, "b": pattern}}))),
        Case("schema: enum of 50,000 strings", chat(_schema_request({"enum": [f"value-{i}" for i in range(50_000)]}))),
    ]
    if image_file_id is not None:
        cases.insert(6, Case("a 200 MiB upload (PNG + junk) in 30 parts", chat({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_file_id}}] * 15}] * 2, "max_tokens": 2})))
    return cases


def _upload_junk_image(client: httpx.Client, workdir: pathlib.Path) -> str | None:
    """A small PNG followed by 200 MiB of junk, uploaded once: the file the 30-part case names."""
    path = workdir / "junk.png"
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="PNG")
    with open(path, "wb") as file:
        file.write(buffer.getvalue())
        file.write(b"\0" * (200 * 2**20))
    with open(path, "rb") as file:
        response = client.post("/v1/files", files={"file": ("junk.png", file, "image/png")}, data={"purpose": "vision"})
    path.unlink()
    if response.status_code != 200:
        logger.warning("The 200 MiB image upload was refused (%d): %s", response.status_code, response.text[:200])
        return None
    return response.json()["id"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="Give up on one case after this long.")
    parser.add_argument("--skip", action="append", default=[], help="Skip the cases whose name holds this text.")
    parser.add_argument("--jobs-only", action="store_true", help="Only the job cases.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    simple = _request(1, 1, _clip())
    report: dict = {"cases": {}}
    with local_serve(num_cpus=2) as (base_url, workdir):
        keys = workdir / "api-keys"
        keys.write_text(f"{KEY}\n")
        app = {"gpu_group": {"enabled": False}, "ingress": {"num_cpus": 0.5}, "auth": {"api_keys_file": str(keys)},
               "files": {"store_url": store_folder(workdir)}}
        serve.run(build_app(app), name="hostile", route_prefix="/")
        ingress, replica = _Process("ServeReplica:hostile:Ingress"), _Process("ServeReplica:hostile:cpu_group")
        with httpx.Client(base_url=base_url, timeout=args.timeout_s, headers=_AUTHORIZATION) as client:
            _simple_request_s(base_url, simple)  # warm-up
            started = time.perf_counter()
            _simple_request_s(base_url, {**simple, "response_format": {"type": "json_object"}})
            report["first_structured_request_s"] = time.perf_counter() - started  # starts the grammar compile server
            alone = sorted(_simple_request_s(base_url, simple) for _ in range(5))
            report["simple_alone_s"] = alone[2]
            report["ingress_rss_start_bytes"] = ingress.rss_bytes()
            cases: list[Case | JobCase] = [] if args.jobs_only else list(_cases(workdir, _upload_junk_image(client, workdir)))
            cases += job_cases(store_folder(workdir), long_video_bytes())
            for case in (case for case in cases if not any(skip in case.name for skip in args.skip)):
                report["cases"][case.name] = _run_case(client, base_url, case, simple, ingress, replica)
                logger.warning("%s: %s", case.name, report["cases"][case.name])
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    print(f"ingress RSS at start: {report['ingress_rss_start_bytes'] / 2**20:.0f} MiB; "
          f"a simple request alone: {report['simple_alone_s']:.3f} s; "
          f"the first structured request (warm-up): {report['first_structured_request_s']:.2f} s")
    print("request | status | seconds | ingress CPU s | ingress peak growth, MiB | replica CPU s | "
          "replica peak growth, MiB | simple request beside, x alone | message")
    for name, row in report["cases"].items():
        print(f"{name} | {row['status']} | {row['seconds']:.3f} | {row['ingress_cpu_s']:.2f} | "
              f"{row['ingress_peak_growth_bytes'] / 2**20:.0f} | {row['replica_cpu_s']:.2f} | "
              f"{row['replica_peak_growth_bytes'] / 2**20:.0f} | {_ratio(row['simple_beside_s'], report['simple_alone_s'])} | "
              f"{row['message']}")
    return 0


def _ratio(beside_s: float | str, alone_s: float) -> str:
    return f"{beside_s / alone_s:.2f}" if isinstance(beside_s, float) else f"refused ({beside_s})"


def _run_case(
    client: httpx.Client, base_url: str, case: Case | JobCase, simple: dict, ingress: _Process, replica: _Process
) -> dict:
    """The case sent with a simple request beside it (started together); the processes' CPU and peak RSS meanwhile.
    The payload is made first: serialising 26 MiB of JSON in this process would slow the simple request's thread.
    A job case is set up first (not measured), then run."""
    payload = case.setup(client) if isinstance(case, JobCase) else case.body()
    ingress_rss, replica_rss = ingress.rss_bytes(), replica.rss_bytes()
    ingress_cpu, replica_cpu = ingress.cpu_s(), replica.cpu_s()
    with ingress.sampling_peak(), replica.sampling_peak(), concurrent.futures.ThreadPoolExecutor(1) as beside:
        simple_future = beside.submit(_simple_request_s, base_url, simple)
        started = time.perf_counter()
        try:
            if isinstance(case, JobCase):
                status, message = case.run(client, payload)
            else:
                response = _send(client, case, payload)
                status, message = response.status_code, response.json().get("error", {}).get("message", "")[:160]
        except httpx.TimeoutException:
            status, message = "timeout", f"no answer within {client.timeout.read:g} s"
        elapsed = time.perf_counter() - started
        try:
            simple_s: float | str = simple_future.result()
        except httpx.HTTPStatusError as error:  # the hostile case left no room for it
            simple_s = f"{error.response.status_code}"
    return {
        "status": status,
        "seconds": elapsed,
        "message": message,
        "ingress_cpu_s": ingress.cpu_s() - ingress_cpu,
        "replica_cpu_s": replica.cpu_s() - replica_cpu,
        "ingress_peak_growth_bytes": ingress.peak_rss_bytes - ingress_rss,
        "replica_peak_growth_bytes": replica.peak_rss_bytes - replica_rss,
        "simple_beside_s": simple_s,
    }


if __name__ == "__main__":
    sys.exit(main())
