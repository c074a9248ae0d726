"""Upload once, ask many: question latency with a ``file_id`` against uploading and decoding every time.

One Ray instance, the default app on the built-in tiny model (CPU group), a 10-minute 720p H.264 video
(bench/sampling.py's textured clip repeated, about 300 MB). For each of a few frame counts (each a new
frame-cache key, so every "first" is a real miss), in the same run:

  baseline  POST /v1/analyze with the video uploaded (upload, demux, decode, answer);
  first     POST /v1/files, then /v1/analyze with its file_id (frames decoded from the store: a miss);
  second    /v1/analyze with the same file_id and frames again (frames from the cache).

Prints the medians and the ratios to the baseline: second-question target at most 0.2x, first at most
1.05x. The tiny model answers in milliseconds, so the figures are the serving path's own cost.

Usage: .venv/bin/python -m bench.files [--minutes 10] [--frames 8,7,6] [--json]
"""

import argparse
import json
import logging
import statistics
import sys
import time

import httpx  # noqa: E402
from ray import serve  # noqa: E402

from bench.local_serve import local_serve  # noqa: I001 - sets Ray's environment first
from bench.sampling import _video  # noqa: E402
from deployments.app import build_app  # noqa: E402

logger = logging.getLogger("bench.files")
APP = "files"


def _analyze(client: httpx.Client, fields: dict[str, str], video: bytes | None = None) -> dict:
    parts = [(name, (None, value)) for name, value in fields.items()]
    if video is not None:
        parts.append(("video", ("video.mp4", video, "video/mp4")))
    response = client.post("/v1/analyze", files=parts)
    response.raise_for_status()
    return response.json()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--frames", default="8,7,6")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    path = _video(args.minutes * 60)
    video = path.read_bytes()
    logger.info("Video: %s, %d bytes", path.name, len(video))
    frame_counts = [int(count) for count in args.frames.split(",")]
    app_args = {
        "gpu_group": {"enabled": False},
        "limits": {"max_upload_bytes": 2 * len(video)},
        "files": {"ttl_s": 0},
    }
    rows = []
    with local_serve(num_cpus=2) as (base_url, _):
        serve.run(build_app(app_args), name=APP, route_prefix="/")
        with httpx.Client(base_url=base_url, timeout=600) as client:
            question = {"question": "What happens?", "max_tokens": "8"}
            _analyze(client, {**question, "frames": "2"}, video)  # warm-up: the model, the decoder, the page cache
            for frames in frame_counts:
                fields = {**question, "frames": str(frames)}
                started = time.perf_counter()
                baseline_body = _analyze(client, fields, video)
                baseline = time.perf_counter() - started

                started = time.perf_counter()
                upload = client.post("/v1/files", files={"file": ("video.mp4", video, "video/mp4")}, data={"purpose": "vision"})
                upload.raise_for_status()
                file_id = upload.json()["id"]
                first_body = _analyze(client, {**fields, "file_id": file_id})
                first = time.perf_counter() - started

                started = time.perf_counter()
                second_body = _analyze(client, {**fields, "file_id": file_id})
                second = time.perf_counter() - started
                assert first_body["timings"]["frame_cache"] == "miss" and second_body["timings"]["frame_cache"] == "hit"
                assert second_body["frames"]["timestamps_s"] == baseline_body["frames"]["timestamps_s"]
                client.delete(f"/v1/files/{file_id}").raise_for_status()
                rows.append({"frames": frames, "baseline_s": baseline, "first_s": first, "second_s": second,
                             "baseline_decode_s": baseline_body["timings"]["decode_s"]})
                logger.info("frames %d: baseline %.2f s, first %.2f s, second %.3f s", frames, baseline, first, second)
    report = {
        "video_bytes": len(video),
        "minutes": args.minutes,
        "rows": rows,
        "baseline_s": statistics.median(row["baseline_s"] for row in rows),
        "first_s": statistics.median(row["first_s"] for row in rows),
        "second_s": statistics.median(row["second_s"] for row in rows),
    }
    report["first_ratio"] = report["first_s"] / report["baseline_s"]
    report["second_ratio"] = report["second_s"] / report["baseline_s"]
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    print(f"{args.minutes}-minute 720p video, {len(video) / 2**20:.0f} MiB; medians over frames {args.frames}:")
    print(f"  upload and decode every time: {report['baseline_s']:.2f} s")
    print(f"  first question by file_id (upload to the store, then ask): {report['first_s']:.2f} s, "
          f"{report['first_ratio']:.2f}x (target <= 1.05x)")
    print(f"  second question by file_id (frames cached): {report['second_s']:.3f} s, "
          f"{report['second_ratio']:.3f}x (target <= 0.2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
