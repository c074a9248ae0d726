"""A small request that asks for a lot: time to refusal and the ingress's memory, against a good request.

The request from the load issue: 16 messages of 15 video parts each (240 tiny 640x480 clips, about
1.7 MB of JSON), and a smaller one of 2 messages x 15 clips that passes the part count but asks for
30 x 8 = 240 frames. Each is sent to the real app (default limits) and must be refused with 413 before
any frame is decoded; a good one-clip request is timed in the same run as the baseline. The ingress
process's resident memory is read (psutil, by the actor's pid) before and after.

The second audit's cases follow: a chunked 160 MiB body, 800,000 one-letter messages (26 MiB), a schema
with an enum of 50,000 strings and one 190 objects deep, 32 PNGs of 40 megapixels (116 KB each), and a
``logit_bias`` key in superscript digits. Each must be refused (4xx) within 2 s.

Usage: .venv/bin/python -m bench.hostile_request [--json]
"""

import argparse
import base64
import io
import json
import logging
import sys
import time

import av  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from ray import serve  # noqa: E402

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
    from PIL import Image

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


def _ingress_rss_bytes() -> int:
    """The ingress replica's RSS, found by the process title Ray gives it (read only; nothing is signalled)."""
    for process in psutil.process_iter(["cmdline"]):
        if any("ServeReplica:hostile:Ingress" in part for part in process.info["cmdline"] or ()):
            return process.memory_info().rss
    raise RuntimeError("No ingress replica process found")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    clip = _clip()
    big_png = _big_png_url()
    cases = {
        "good: 1 clip": _request(1, 1, clip),
        "240 clips (16 x 15)": _request(16, 15, clip),
        "30 clips (2 x 15), 240 frames": _request(2, 15, clip),
        "chunked 160 MiB body": lambda: _chunked_body(160 * 2**20),
        "800,000 one-letter messages": {"messages": [{"role": "user", "content": "a"}] * 800_000, "max_tokens": 2},
        "schema: enum of 50,000 strings": _schema_request({"enum": [f"value-{i}" for i in range(50_000)]}),
        "schema: 190 objects deep": _schema_request(_nested(190)),
        "32 PNGs of 40 megapixels": {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": big_png}}] * 16}] * 2, "max_tokens": 2},
        "logit_bias key in superscript": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                          "logit_bias": {"\u00b2": 1}},
    }
    report: dict = {}
    with local_serve(num_cpus=2) as (base_url, _):
        serve.run(build_app({"gpu_group": {"enabled": False}, "ingress": {"num_cpus": 0.5}}), name="hostile", route_prefix="/")
        report["ingress_rss_start_bytes"] = _ingress_rss_bytes()
        with httpx.Client(base_url=base_url, timeout=300) as client:
            client.post("/v1/chat/completions", json=cases["good: 1 clip"]).raise_for_status()  # warm-up
            for name, body in cases.items():
                payload = body() if callable(body) else json.dumps(body).encode()
                started = time.perf_counter()
                response = client.post("/v1/chat/completions", content=payload, headers={"content-type": "application/json"})
                elapsed = time.perf_counter() - started
                report[name] = {
                    "status": response.status_code,
                    "seconds": elapsed,
                    "body_bytes": len(payload) if isinstance(payload, bytes) else 160 * 2**20,
                    "message": response.json().get("error", {}).get("message", "")[:160],
                    "ingress_rss_after_bytes": _ingress_rss_bytes(),
                }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    print(f"ingress RSS at start: {report['ingress_rss_start_bytes'] / 2**20:.0f} MiB")
    print("request | status | seconds | body KB | ingress RSS after, MiB | message")
    for name in cases:
        row = report[name]
        print(f"{name} | {row['status']} | {row['seconds']:.3f} | {row['body_bytes'] / 1024:.0f} | "
              f"{row['ingress_rss_after_bytes'] / 2**20:.0f} | {row['message']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
