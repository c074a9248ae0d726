"""A mixed workload against a replica with little memory to spare: every request answered, the peak inside the prediction.

One CPU replica of the mid-size Qwen2-VL (bench/mid_model.py, fp32, one thread) with
``cpu_group.memory_bytes`` set to its weights plus ``--headroom-mib``, so admission has to hold
requests back. Concurrent clients send short text questions, 448x448 images and videos at the frame
limit (32 frames), all at once. While they run, the replica process's RSS is sampled (psutil, by the
process title Ray gives it; read only) and ``/v1/memory`` is polled for the batch's admitted bytes.

Reported: requests and failures (target 0, out-of-memory or otherwise), the peak batch, the largest
admitted (predicted) bytes, and the replica's peak RSS growth over its idle RSS after a warm-up.

Usage: .venv/bin/python -m bench.mixed_load [--headroom-mib 1800] [--json]
"""

import argparse
import base64
import concurrent.futures
import io
import json
import pathlib
import sys
import threading
import time

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from PIL import Image  # noqa: E402
from ray import serve  # noqa: E402

from bench.hostile_request import _clip  # noqa: E402
from bench.local_serve import local_serve  # noqa: I001 - sets Ray's environment first
from bench.mid_model import ensure_mid_model  # noqa: E402
from deployments.app import build_app  # noqa: E402

APP = "mixed"


def _image_url() -> str:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (448, 448, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _replica_process() -> psutil.Process:
    for process in psutil.process_iter(["cmdline"]):
        if any(f"ServeReplica:{APP}:cpu_group" in part for part in process.info["cmdline"] or ()):
            return process
    raise RuntimeError("No CPU-group replica process found")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--headroom-mib", type=int, default=1800)
    parser.add_argument("--model-dir", type=pathlib.Path, default=pathlib.Path("bench/results/mid-qwen2-vl"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    model_path = ensure_mid_model(args.model_dir)
    weights_bytes = sum(path.stat().st_size for path in model_path.glob("*.safetensors"))
    video, image = _clip(448, 448, frames=32), _image_url()
    workload = (
        [{"content": f"What happens in scene {index}?", "max_tokens": 24} for index in range(8)]
        + [{"content": [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "Describe."}],
            "max_tokens": 16} for _ in range(3)]
        + [{"content": [{"type": "video_url", "video_url": {"url": video}}, {"type": "text", "text": "What happens?"}],
            "max_tokens": 16} for _ in range(3)]
    )
    app_args = {
        "model": {"source": str(model_path.resolve())},
        # The limits of this workload (its largest request is the 32-frame video): the replica's activation reserve
        # is the largest request the limits allow, priced as admission prices it (1681 MiB here), and must fit the headroom.
        "limits": {"video_frames": 32, "max_video_frames": 32, "max_media_parts": 1, "max_request_frames": 32,
                   "max_request_pixels": 32 * 448 * 448, "max_prompt_tokens": 4160, "max_tokens": 24, "default_max_tokens": 24},
        "gpu_group": {"enabled": False},
        "cpu_group": {
            "num_cpus": 1,
            "chain": ["fp32"],
            "memory_bytes": weights_bytes + args.headroom_mib * 2**20,
            "max_batch_size": 16,
            "max_ongoing_requests": 32,
        },
    }
    report: dict = {"headroom_mib": args.headroom_mib}
    with local_serve(num_cpus=2) as (base_url, _):
        serve.run(build_app(app_args), name=APP, route_prefix="/")
        with httpx.Client(base_url=base_url, timeout=600) as client:
            for body in (workload[0], workload[-1]):  # warm-up: touch the weights and the vision tower
                client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": body["content"]}],
                                                          "max_tokens": 2}).raise_for_status()
            replica = _replica_process()
            idle_rss = replica.memory_info().rss
            batching = client.get("/v1/memory").json()["groups"]["cpu"][0]["batching"]
            report["request_headroom_bytes"] = batching["headroom_bytes"]
            peaks = {"rss": idle_rss, "admitted": 0}
            done = threading.Event()

            def sample_rss() -> None:
                while not done.is_set():
                    peaks["rss"] = max(peaks["rss"], replica.memory_info().rss)
                    time.sleep(0.02)

            def sample_admitted() -> None:
                # /v1/memory calls every replica; a few a second is enough and leaves the replica its requests.
                with httpx.Client(base_url=base_url, timeout=60) as poller:
                    while not done.is_set():
                        state = poller.get("/v1/memory").json()["groups"]["cpu"][0].get("batching") or {}
                        peaks["admitted"] = max(peaks["admitted"], state.get("admitted_bytes", 0))
                        time.sleep(0.25)

            def send(body: dict) -> int:
                with httpx.Client(base_url=base_url, timeout=600) as sender:
                    message = {"role": "user", "content": body["content"]}
                    return sender.post("/v1/chat/completions", json={"messages": [message], "max_tokens": body["max_tokens"]}).status_code

            samplers = [threading.Thread(target=target, daemon=True) for target in (sample_rss, sample_admitted)]
            for sampler in samplers:
                sampler.start()
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(max_workers=len(workload)) as pool:
                statuses = list(pool.map(send, workload))
            report["seconds"] = time.perf_counter() - started
            done.set()
            for sampler in samplers:
                sampler.join()
            final = client.get("/v1/memory").json()["groups"]["cpu"][0]
    report.update(
        requests=len(statuses),
        failed=sum(status != 200 for status in statuses),
        request_out_of_memory=final["request_out_of_memory"],
        peak_batch_size=final["batching"]["peak_batch_size"],
        peak_admitted_bytes=final["batching"]["peak_admitted_bytes"],  # the scheduler's own peak, not a poll's
        polled_admitted_bytes=peaks["admitted"],
        peak_rss_growth_bytes=peaks["rss"] - idle_rss,
    )
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    mib = 2**20
    print(f"{report['requests']} requests (8 text, 3 images, 3 videos of 32 frames) in {report['seconds']:.1f} s: "
          f"{report['failed']} failed, {report['request_out_of_memory']} out of memory (target 0)")
    print(f"headroom for requests {report['request_headroom_bytes'] / mib:.0f} MiB; peak batch {report['peak_batch_size']}; "
          f"largest admitted (predicted) {report['peak_admitted_bytes'] / mib:.0f} MiB; replica peak RSS growth "
          f"{report['peak_rss_growth_bytes'] / mib:.0f} MiB "
          f"({report['peak_rss_growth_bytes'] / max(1, report['peak_admitted_bytes']):.2f}x the prediction)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
