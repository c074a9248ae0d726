"""Throughput of one replica against the scaled-out group, under the same bounded load.

Two runs of the same load (``--requests`` requests, ``--concurrency`` at a time)
against the CPU group held at one replica, then at ``--replicas`` replicas (min =
max, so the autoscaler's delays do not blur the comparison), in one Ray instance.
Prints requests per second for each and the ratio. On this 2-core machine two
replicas of one torch thread each are the most that fit; the ceiling is 2x.

Then scale-out time: the CPU group (one replica to start, up to two, nf4 of the mid-size Qwen2-VL from
``bench/mid_model.py``) gets a step in load, from none to 4 clients sending without pause; the figure is the
time from the step to the first answer from the new replica. Twice: with the weight cache off (the new
replica quantizes the checkpoint) and on (the first replica stored the nf4 weights; the new one reads them).

Usage: .venv/bin/python -m bench.autoscale [--requests 200] [--concurrency 8] [--replicas 2] [--json]
"""

import argparse
import concurrent.futures
import json
import logging
import pathlib
import sys
import threading
import time

import httpx  # noqa: E402
from ray import serve  # noqa: E402

from bench.local_serve import local_serve  # noqa: I001 - sets Ray's environment first
from bench.mid_model import ensure_mid_model  # noqa: E402
from deployments.app import build_app  # noqa: E402

logger = logging.getLogger("bench.autoscale")
REQUEST = {"messages": [{"role": "user", "content": "Describe the scene."}], "max_tokens": 32, "temperature": 0}


def _throughput(base_url: str, requests: int, concurrency: int) -> tuple[float, int]:
    def send(_: int) -> int:
        with httpx.Client(base_url=base_url, timeout=120) as client:
            return client.post("/v1/chat/completions", json=REQUEST).status_code

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        statuses = list(pool.map(send, range(requests)))
    elapsed = time.perf_counter() - started
    return requests / elapsed, sum(1 for status in statuses if status != 200)


def _scale_out_seconds(base_url: str, *, clients: int = 4, timeout_s: float = 300) -> tuple[float, float, str]:
    """From a step in load (0 to ``clients`` sending without pause) to the first answer from a second replica;
    also how long that replica took to load and where its weights came from (its /v1/memory entry)."""
    with httpx.Client(base_url=base_url, timeout=120) as client:
        first = client.post("/v1/chat/completions", json=REQUEST).headers["x-served-by-replica"]
        before = client.get("/v1/memory").json()["groups"]["cpu"]
    if len(before) != 1:
        # A second replica started before the step (it would not be the scale-out this measures, and with the
        # weight cache on it could have started before the first replica stored its entry).
        raise RuntimeError(f"{len(before)} replicas before the step; the autoscaler added one during the first load")
    stop = threading.Event()
    new_replica_at: list[float] = []

    def send() -> None:
        with httpx.Client(base_url=base_url, timeout=120) as client:
            while not stop.is_set():
                response = client.post("/v1/chat/completions", json=REQUEST)
                if response.status_code == 200 and response.headers["x-served-by-replica"] != first and not new_replica_at:
                    new_replica_at.append(time.monotonic())
                    stop.set()

    step = time.monotonic()
    threads = [threading.Thread(target=send, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    stop.wait(timeout_s)
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    if not new_replica_at:
        raise TimeoutError(f"no second replica answered within {timeout_s} s")
    replicas = httpx.get(f"{base_url}/v1/memory", timeout=60).json()["groups"]["cpu"]
    new = next(r for r in replicas if r.get("replica") not in (None, first))
    return new_replica_at[0] - step, new["model"].get("load_seconds", 0.0), new["model"].get("weights_from", "")


def scale_out(base_url: str, model_dir: pathlib.Path, cache_dir: pathlib.Path) -> dict[str, dict[str, float]]:
    results = {}
    for name, cache_bytes in (("cold_cache", 0), ("warm_cache", 64 * 1024**3)):
        app_args = {
            "model": {"source": str(model_dir.resolve()), "weight_cache_dir": str(cache_dir), "weight_cache_bytes": cache_bytes},
            "limits": {"max_tokens": 512},
            "gpu_group": {"enabled": False},
            "cpu_group": {
                "num_cpus": 1,
                "chain": ["nf4"],
                "autoscaling": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                                "upscale_delay_s": 0, "look_back_period_s": 11},
            },
        }
        serve.run(build_app(app_args), name="scale-out", route_prefix="/")
        seconds, load_s, weights_from = _scale_out_seconds(base_url)
        results[name] = {"step_to_new_replica_answer_s": seconds, "new_replica_load_s": load_s, "weights_from": weights_from}
        logger.info("scale-out, %s: first answer from the new replica %.2f s after the step (its load %.2f s, from the %s)",
                    name.replace("_", " "), seconds, load_s, weights_from)
        serve.delete("scale-out")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--model-dir", type=pathlib.Path, default=pathlib.Path("bench/results/mid-qwen2-vl"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    figures = {}
    model_dir = ensure_mid_model(args.model_dir)
    with local_serve(num_cpus=args.replicas + 2) as (base_url, workdir):
        for replicas in (1, args.replicas):
            app_args = {
                "gpu_group": {"enabled": False},
                "cpu_group": {
                    "num_cpus": 1,
                    "max_ongoing_requests": args.concurrency,
                    "autoscaling": {"min_replicas": replicas, "max_replicas": replicas},
                },
            }
            serve.run(build_app(app_args), name="autoscale", route_prefix="/")
            _throughput(base_url, 10, 2)  # warm up every replica's first request
            rps, failed = _throughput(base_url, args.requests, args.concurrency)
            figures[f"replicas_{replicas}"] = {"requests_per_s": rps, "failed": failed}
            serve.delete("autoscale")
        scaling = scale_out(base_url, model_dir, workdir / "weight-cache")
    ratio = figures[f"replicas_{args.replicas}"]["requests_per_s"] / figures["replicas_1"]["requests_per_s"]
    for name, figure in figures.items():
        logger.info("%-12s %8.2f requests/s, %d failed", name, figure["requests_per_s"], figure["failed"])
    logger.info("scaled out / one replica: %.2fx", ratio)
    if args.json:
        sys.stdout.write(json.dumps({"figures": figures, "ratio": ratio, "scale_out": scaling}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
