"""What a GPU-group failure costs the clients: failed requests, added latency, time to recover.

One run, one Ray instance with a logical GPU. The GPU group runs its chain on
the CPU (``gpu_group.device: cpu``) against GPU memory reported by a probe file
at the hardware boundary, so "memory short" and "memory freed" are real
events for the replicas:

1. steady state: GPU group ready; p50 of requests it serves;
2. failure: the device reports no free memory and the GPU replica drops its
   model (health fails, Serve replaces it, the new replica waits for memory);
   requests keep coming: every one must be answered (by the CPU group);
3. recovery: the device reports its memory free again; time until answers come
   from the GPU group, with no redeploy.

Usage: .venv/bin/python -m bench.fallback [--steady 50] [--json]
"""

import argparse
import json
import logging
import pathlib
import statistics
import sys
import time

import httpx  # noqa: E402
from ray import serve  # noqa: E402

from bench.local_serve import local_serve  # noqa: I001 - sets Ray's environment first
from bench.plots import DOCS_DIR, fallback_timeline_chart  # noqa: E402
from deployments.app import build_app  # noqa: E402
from memory.probe import FileGpu  # noqa: E402

logger = logging.getLogger("bench.fallback")
GIB = 1024**3
REQUEST = {"messages": [{"role": "user", "content": "Who answers?"}], "max_tokens": 8, "temperature": 0}


def _write_probe(path, free_bytes: int) -> None:
    FileGpu.write(path, total_bytes=8 * GIB, free_bytes=free_bytes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steady", type=int, default=50, help="requests in steady state")
    parser.add_argument("--failure-s", type=float, default=10.0, help="seconds of traffic while memory is short")
    parser.add_argument("--after-s", type=float, default=5.0, help="seconds of traffic after the recovery, for the chart")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot-dir", type=pathlib.Path, default=DOCS_DIR, help="where the PNG chart goes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    with local_serve(num_cpus=4, num_gpus=1) as (base_url, workdir):
        probe = workdir / "gpu-probe.json"
        _write_probe(probe, 8 * GIB)
        app_args = {
            "gpu_group": {
                "device": "cpu", "num_cpus": 1, "load_retry_period_s": 0.5, "health_check_period_s": 1,
                "env_vars": {"VIDEO_DETECTIVE_GPU_PROBE_FILE": str(probe)},
            },
            "cpu_group": {"num_cpus": 1},
            "routing": {"gpu_timeout_s": 10, "breaker_cooldown_s": 1},
        }
        serve.run(build_app(app_args), name="fallback", route_prefix="/")
        records: list[tuple[str, int, str, float, float]] = []  # phase, status, group, seconds, answered at (s)
        events: dict[str, float] = {}
        start = time.monotonic()  # reset once warm
        with httpx.Client(base_url=base_url, timeout=60) as client:

            def send(phase: str) -> str:
                started = time.perf_counter()
                response = client.post("/v1/chat/completions", json=REQUEST)
                group = response.headers.get("x-served-by-group", "none")
                records.append((phase, response.status_code, group, time.perf_counter() - started, time.monotonic() - start))
                return group

            while send("warmup") != "gpu":
                time.sleep(0.2)
            start = time.monotonic()
            for _ in range(args.steady):
                send("steady")

            _write_probe(probe, 0)
            events["memory taken"] = time.monotonic() - start
            serve.get_deployment_handle("gpu_group", "fallback").unload.remote().result(timeout_s=30)
            failure_end = time.monotonic() + args.failure_s
            while time.monotonic() < failure_end:
                send("failure")

            _write_probe(probe, 8 * GIB)
            freed_at = time.monotonic()
            events["memory freed"] = freed_at - start
            recovery_deadline = freed_at + 120
            while send("recovery") != "gpu" and time.monotonic() < recovery_deadline:
                pass
            recovery_s = time.monotonic() - freed_at
            events["back on the GPU"] = time.monotonic() - start
            after_end = time.monotonic() + args.after_s
            while time.monotonic() < after_end:
                send("after")

    steady = [seconds for phase, status, group, seconds, _ in records if phase == "steady" and group == "gpu"]
    failure = [record for record in records if record[0] == "failure"]
    first_fallback = next((seconds for phase, status, group, seconds, _ in records if phase in ("failure",) and group == "cpu"), None)
    failed = sum(1 for record in records if record[0] != "warmup" and record[1] != 200)
    steady_p50_ms = statistics.median(steady) * 1000
    figures = {
        "requests": len(records) - sum(1 for record in records if record[0] == "warmup"),
        "failed_requests": failed,
        "steady_p50_ms": steady_p50_ms,
        "first_fallback_ms": first_fallback * 1000 if first_fallback is not None else None,
        "first_fallback_added_ms": first_fallback * 1000 - steady_p50_ms if first_fallback is not None else None,
        "failure_p50_ms": statistics.median(record[3] for record in failure) * 1000 if failure else None,
        "failure_max_ms": max(record[3] for record in failure) * 1000 if failure else None,
        "failure_groups": sorted({record[2] for record in failure}),
        "recovery_s": recovery_s,
    }
    for name, value in figures.items():
        logger.info("%-26s %s", name, f"{value:.2f}" if isinstance(value, float) else value)
    logger.info("target: 0 failed requests: %s", "met" if failed == 0 else "NOT met")
    timeline = [(answered_at, group, status) for phase, status, group, _, answered_at in records if phase != "warmup"]
    fallback_timeline_chart(timeline, events, args.plot_dir / "fallback-timeline.png")
    if args.json:
        sys.stdout.write(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
