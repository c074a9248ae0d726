"""What a large /v1/analyze upload costs in memory: the upload is streamed to disk, never held whole.

One run, one Ray instance: a 5-minute 720p H.264 video (about 150 MB) is posted to /v1/analyze while
the resident memory of the Serve HTTP proxy and of the ingress replica is sampled every 20 ms. Prints
each process's peak growth over its level before the upload, as bytes and as a fraction of the
upload; a server that read the body into memory would grow by at least 1.0x the upload (the proxy
forwards the body as it arrives, in messages the ingress pulls).

Usage: .venv/bin/python -m bench.upload [--minutes 5] [--rates-mb-s 0,100,25] [--json]
"""

import argparse
import json
import logging
import pathlib
import shutil
import sys
import tempfile
import threading
import time

import httpx  # noqa: E402
import psutil  # noqa: E402
from ray import serve  # noqa: E402

from bench.local_serve import local_serve  # noqa: I001 - sets Ray's environment first
from bench.sampling import CLIP_S, _encode_clip, _repeat_clip  # noqa: E402
from deployments.app import build_app  # noqa: E402

logger = logging.getLogger("bench.upload")
APP = "upload"


def _process(fragment: str) -> psutil.Process:
    """The Ray worker whose process title holds ``fragment`` (Ray titles workers ``ray::<actor>``)."""
    for process in psutil.process_iter(["cmdline"]):
        if any(fragment in part for part in process.info["cmdline"] or ()):
            return process
    raise RuntimeError(f"No process with {fragment!r} in its title")


class _PeakRss:
    """Samples a process's resident bytes in a thread; ``peak_bytes`` once stopped."""

    def __init__(self, process: psutil.Process, period_s: float = 0.02) -> None:
        self._process = process
        self._period_s = period_s
        self.start_bytes = process.memory_info().rss
        self.peak_bytes = self.start_bytes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)
            time.sleep(self._period_s)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_bytes - self.start_bytes



_BOUNDARY = "vd-bench-boundary"


def _multipart(path, *, rate_bytes_s: float | None, chunk_bytes: int = 1 << 20):
    """The analyze form as a streamed multipart body, sent at ``rate_bytes_s`` (as fast as possible if None)."""
    head = (
        f"--{_BOUNDARY}\r\nContent-Disposition: form-data; name=\"question\"\r\n\r\nWhat happens?\r\n"
        f"--{_BOUNDARY}\r\nContent-Disposition: form-data; name=\"max_tokens\"\r\n\r\n2\r\n"
        f"--{_BOUNDARY}\r\nContent-Disposition: form-data; name=\"video\"; filename=\"video.mp4\"\r\n"
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    yield head
    started = time.perf_counter()
    sent = 0
    with path.open("rb") as upload:
        while chunk := upload.read(chunk_bytes):
            yield chunk
            sent += len(chunk)
            if rate_bytes_s:
                ahead_s = sent / rate_bytes_s - (time.perf_counter() - started)
                if ahead_s > 0:
                    time.sleep(ahead_s)
    yield f"\r\n--{_BOUNDARY}--\r\n".encode()


def _measure(clip: pathlib.Path, video: pathlib.Path, rate_mb_s: float) -> dict:
    with local_serve(num_cpus=3) as (base_url, workdir):
        upload_dir = workdir / "uploads"
        upload_dir.mkdir()
        app_args = {
            "limits": {"max_upload_bytes": 1024**3, "video_frames": 8},
            "gpu_group": {"enabled": False},
            "cpu_group": {"num_cpus": 1},
            "ingress": {"upload_dir": str(upload_dir)},
        }
        serve.run(build_app(app_args), name=APP, route_prefix=f"/{APP}")
        url = f"{base_url}/{APP}"
        with httpx.Client(timeout=600) as client:
            # Warm-up: the first request sets up the handles and routes.
            client.post(
                f"{url}/v1/analyze",
                data={"question": "warm-up", "max_tokens": "2"},
                files={"video": ("clip.mp4", clip.read_bytes(), "video/mp4")},
            ).raise_for_status()
            proxy, ingress = _PeakRss(_process("ProxyActor")), _PeakRss(_process(f"ServeReplica:{APP}:Ingress"))
            started = time.perf_counter()
            response = client.post(
                f"{url}/v1/analyze",
                content=_multipart(video, rate_bytes_s=rate_mb_s * 1e6 or None),
                headers={"content-type": f"multipart/form-data; boundary={_BOUNDARY}"},
            )
            elapsed_s = time.perf_counter() - started
            growth = {"proxy": proxy.stop(), "ingress": ingress.stop()}
        response.raise_for_status()
        leftover = sorted(path.name for path in upload_dir.iterdir())
        serve.delete(APP)
    return {
        "rate_mb_s": rate_mb_s,
        "seconds": round(elapsed_s, 2),
        "frames": response.json()["frames"]["count"],
        "peak_rss_growth_bytes": growth,
        "upload_files_left": leftover,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=5, help="length of the uploaded 720p video")
    parser.add_argument(
        "--rates-mb-s", default="0,100,25", help="client send rates to try, MB/s; 0 is as fast as loopback goes"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    videos = pathlib.Path(tempfile.mkdtemp(prefix="vd-bench-upload-"))
    try:
        clip, video = videos / "clip.mp4", videos / "video.mp4"
        logger.info("Writing a %d-minute 720p H.264 video", args.minutes)
        _encode_clip(clip, CLIP_S)
        _repeat_clip(clip, video, args.minutes * 60 // CLIP_S)
        size = video.stat().st_size
        # A fresh Ray instance per rate: memory one run's buffers left behind would hide the next run's growth.
        rows = [_measure(clip, video, rate) for rate in (float(value) for value in args.rates_mb_s.split(","))]
    finally:
        shutil.rmtree(videos, ignore_errors=True)

    for row in rows:
        growth = row["peak_rss_growth_bytes"]
        row["peak_rss_growth_vs_upload"] = {name: round(grown / size, 3) for name, grown in growth.items()}
        rate = f"{row['rate_mb_s']:g} MB/s" if row["rate_mb_s"] else "loopback speed"
        logger.info(
            "upload %.0f MB at %s: answered in %.2f s (%d frames); upload files left: %s",
            size / 1e6, rate, row["seconds"], row["frames"], row["upload_files_left"] or "none",
        )
        for name, grown in row["peak_rss_growth_bytes"].items():
            logger.info("  %-8s peak RSS growth %8.1f MB = %.3fx the upload", name, grown / 1e6, grown / size)
    result = {"upload_bytes": size, "runs": rows}
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
