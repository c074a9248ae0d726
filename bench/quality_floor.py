"""What the GPU floor replicas buy under load: the same load with and without ``gpu_group.floor``.

One Ray instance with a logical GPU; the GPU group and its floor replicas run their chains on the CPU
(``device: cpu``) against an 8 GiB GPU reported by a probe file, as in ``bench.fallback``. The GPU group
is one bf16 replica on half of the card that holds ``--gpu-capacity`` requests (its batch plus its
queue); a CPU group of one replica takes what no GPU replica can. The same closed-loop load (``--clients``
clients sending without pause for ``--seconds``) runs twice, in one command:

1. **floor off**: what the GPU group cannot take goes to the CPU group;
2. **floor on**: ``min_precision: int8`` and ``floor.max_replicas`` int8 replicas of a quarter of the card
   each, started from zero when the GPU group is busy.

Printed per run: requests, failed, the share answered by each group and precision, p50 and p95 latency,
and (floor on) when the first floor answer came and whether the floor went back to zero after the load.
On this 2-core machine every "GPU" replica shares the same cores as the CPU group, so latencies say little;
the share of requests answered on a GPU replica is the figure (on a GPU node the CPU group is many times
slower than any GPU replica).

Usage: .venv/bin/python -m bench.quality_floor [--clients 6] [--seconds 40] [--floor-replicas 2] [--json]
"""

import argparse
import collections
import json
import logging
import statistics
import sys
import threading
import time

import httpx  # noqa: E402
from ray import serve  # noqa: E402

from bench.local_serve import local_serve  # noqa: I001 - sets Ray's environment first
from deployments.app import build_app  # noqa: E402
from memory.probe import FileGpu  # noqa: E402

logger = logging.getLogger("bench.quality_floor")
GIB = 1024**3
REQUEST = {"messages": [{"role": "user", "content": "Describe the scene."}], "max_tokens": 32, "temperature": 0}


def _app_args(probe: str, *, floor_replicas: int, gpu_capacity: int) -> dict:
    gpu_group = {
        "device": "cpu", "num_cpus": 0.5, "num_gpus": 0.5, "chain": ["bf16", "int8"],
        "max_batch_size": gpu_capacity, "max_ongoing_requests": gpu_capacity, "max_queued_requests": 1,
        "env_vars": {"VIDEO_DETECTIVE_GPU_PROBE_FILE": probe},
        "autoscaling": {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": gpu_capacity,
                        "upscale_delay_s": 0, "downscale_delay_s": 5, "look_back_period_s": 11},
    }
    if floor_replicas:
        gpu_group.update({"min_precision": "int8", "floor": {"max_replicas": floor_replicas, "num_gpus": 0.25}})
    return {
        "gpu_group": gpu_group,
        "cpu_group": {"num_cpus": 0.5, "max_batch_size": 4, "max_ongoing_requests": 8, "max_queued_requests": 64,
                      "autoscaling": {"min_replicas": 1, "max_replicas": 1}},
        "routing": {"gpu_timeout_s": 30, "breaker_cooldown_s": 30},
    }


def _run(base_url: str, name: str, args: dict, *, clients: int, seconds: float) -> dict:
    route = f"/{name}"
    serve.run(build_app(args), name=name, route_prefix=route)
    url = base_url + route
    with httpx.Client(base_url=url, timeout=120) as client:
        deadline = time.monotonic() + 180
        while client.post("/v1/chat/completions", json=REQUEST).headers.get("x-served-by-group") != "gpu":
            if time.monotonic() > deadline:
                raise RuntimeError("the GPU group never answered")
            time.sleep(0.5)
    records: list[tuple[float, int, str, str, float]] = []  # answered at, status, group, precision, seconds
    lock = threading.Lock()
    start = time.monotonic()
    end = start + seconds

    def send_until_end() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while time.monotonic() < end:
                sent = time.perf_counter()
                response = http.post("/v1/chat/completions", json=REQUEST)
                with lock:
                    records.append((
                        time.monotonic() - start, response.status_code, response.headers.get("x-served-by-group", "none"),
                        response.headers.get("x-served-by-precision", "none"), time.perf_counter() - sent,
                    ))

    threads = [threading.Thread(target=send_until_end) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    memory = httpx.get(f"{url}/v1/memory", timeout=30).json()
    floor_back_to_zero_s = None
    if "gpu_floor" in memory["groups"]:
        load_end = time.monotonic()
        while time.monotonic() - load_end < 180:
            if httpx.get(f"{url}/readyz", timeout=30).json()["groups"]["gpu_floor"]["status"] == "idle":
                floor_back_to_zero_s = time.monotonic() - load_end
                break
            time.sleep(1)
    serve.delete(name)

    answered = [record for record in records if record[1] == 200]
    by_group = collections.Counter(f"{group} {precision}" for _, _, group, precision, _ in answered)
    latencies = sorted(record[4] for record in answered)
    first_floor = min((at for at, _, group, _, _ in answered if group == "gpu_floor"), default=None)
    return {
        "run": name,
        "requests": len(records),
        "failed": len(records) - len(answered),
        "answered_by": {key: count / len(answered) for key, count in sorted(by_group.items())},
        "on_a_gpu_replica": sum(1 for record in answered if record[2] != "cpu") / len(answered),
        "p50_ms": statistics.median(latencies) * 1000,
        "p95_ms": latencies[int(0.95 * (len(latencies) - 1))] * 1000,
        "first_floor_answer_s": first_floor,
        "floor_replicas_at_the_end": len(memory["groups"].get("gpu_floor", [])),
        "floor_spills_by_reason": memory.get("floor_spills_by_reason", {}),
        "fallbacks_by_reason": memory.get("fallbacks_by_reason", {}),
        "floor_back_to_zero_s": floor_back_to_zero_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--floor-replicas", type=int, default=2)
    parser.add_argument("--gpu-capacity", type=int, default=2, help="requests the GPU replica holds (batch and queue)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    results = []
    with local_serve(num_cpus=4, num_gpus=1) as (base_url, workdir):
        probe = workdir / "gpu-probe.json"
        FileGpu.write(probe, total_bytes=8 * GIB, free_bytes=8 * GIB)
        for name, floor_replicas in (("floor-off", 0), ("floor-on", args.floor_replicas)):
            app_args = _app_args(str(probe), floor_replicas=floor_replicas, gpu_capacity=args.gpu_capacity)
            results.append(_run(base_url, name, app_args, clients=args.clients, seconds=args.seconds))
    for result in results:
        logger.info("%s: %d requests, %d failed; on a GPU replica %.1f%%; p50 %.0f ms, p95 %.0f ms",
                    result["run"], result["requests"], result["failed"], 100 * result["on_a_gpu_replica"],
                    result["p50_ms"], result["p95_ms"])
        logger.info("  answered by: %s", ", ".join(f"{key} {share:.1%}" for key, share in result["answered_by"].items()))
        if result["first_floor_answer_s"] is not None:
            logger.info("  first floor answer %.1f s into the load; %d floor replica(s) at its end; back to zero %s after",
                        result["first_floor_answer_s"], result["floor_replicas_at_the_end"],
                        f"{result['floor_back_to_zero_s']:.1f} s" if result["floor_back_to_zero_s"] is not None else "not")
    off, on = results
    logger.info("share on a GPU replica, floor on / off: %.2fx", on["on_a_gpu_replica"] / max(off["on_a_gpu_replica"], 1e-9))
    if args.json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
