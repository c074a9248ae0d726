"""Throughput of one replica against the scaled-out group, under the same bounded load.

Two runs of the same load (``--requests`` requests, ``--concurrency`` at a time)
against the CPU group held at one replica, then at ``--replicas`` replicas (min =
max, so the autoscaler's delays do not blur the comparison), in one Ray instance.
Prints requests per second for each and the ratio. On this 2-core machine two
replicas of one torch thread each are the most that fit; the ceiling is 2x.

Usage: .venv/bin/python -m bench.autoscale [--requests 200] [--concurrency 8] [--replicas 2] [--json]
"""

import argparse
import concurrent.futures
import json
import logging
import sys
import time

from bench.local_serve import local_serve  # noqa: I001 - sets Ray's environment first

import httpx  # noqa: E402
from ray import serve  # noqa: E402

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    figures = {}
    with local_serve(num_cpus=args.replicas + 2) as (base_url, _):
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
    ratio = figures[f"replicas_{args.replicas}"]["requests_per_s"] / figures["replicas_1"]["requests_per_s"]
    for name, figure in figures.items():
        logger.info("%-12s %8.2f requests/s, %d failed", name, figure["requests_per_s"], figure["failed"])
    logger.info("scaled out / one replica: %.2fx", ratio)
    if args.json:
        sys.stdout.write(json.dumps({"figures": figures, "ratio": ratio}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
