"""A newcomer's first minutes: ``bin/serve`` on the default ``serve_config.yaml`` (here, a machine without a GPU), one
first job, then SIGTERM. For each checkout given (this one, and a baseline such as a worktree of an older commit):

- **start**: seconds from ``bin/serve`` to ``/healthz`` answering, and to ``/readyz`` saying the CPU group is up (its
  replica started and its model loaded: what the job needs);
- **first job**, sent once the CPU group is up: a 2-segment job on a 10 s 720p clip (two segments of 5 s), its wall time, its work (the segments'
  decode and inference time and the final answer's inference time, as the job reports them) and the difference: the time it waited for nothing. On a
  GPU-less machine the GPU group's replica is never scheduled; a router that does not know it waits
  ``routing.gpu_timeout_s`` (30 s) on it;
- **stop**: seconds from SIGTERM to ``bin/serve``'s exit, its exit status, and whether Serve's controller gave up
  ("Controller failed to shut down within 30.0s").

Each server runs alone, on a free port, with Ray's temp dir in a folder of its own, and is stopped by its pid.

Usage: .venv/bin/python -m bench.first_job [--baseline PATH_TO_OTHER_CHECKOUT] [--json]
(a baseline: ``git worktree add /tmp/before <commit>``, with this checkout's ``.venv`` linked into it)
"""

import argparse
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx
import yaml

from bench.jobs import long_video
from bench.local_serve import free_port
from bench.polling import wait_for

logger = logging.getLogger("bench.first_job")
ROOT = pathlib.Path(__file__).resolve().parent.parent
CLIP_S = 10
SEGMENT_S = 5


def run_once(checkout: pathlib.Path, clip: pathlib.Path) -> dict[str, Any]:
    """Start ``checkout``'s ``bin/serve`` on its own ``serve_config.yaml``, run the first job, stop it."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="vd-first-job-") as folder:
        work = pathlib.Path(folder)
        config = yaml.safe_load((checkout / "serve_config.yaml").read_text())
        config["http_options"]["port"] = port
        # Files and jobs in this run's folder: the default store under the system temp dir is every server's.
        config["applications"][0]["args"]["files"] = {"store_url": (work / "store").as_uri()}
        (work / "serve_config.yaml").write_text(yaml.safe_dump(config))
        (work / "ray").mkdir()
        env = {**os.environ, "SERVE_CONFIG": str(work / "serve_config.yaml"), "RAY_TMPDIR": str(work / "ray")}
        log_path = work / "serve.log"
        started = time.monotonic()
        with open(log_path, "wb") as log:
            server = subprocess.Popen([str(checkout / "bin" / "serve")], cwd=checkout, env=env, stdout=log,
                                      stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200, 300, "the server's /healthz",
                     interval_s=0.5, tolerated=(httpx.HTTPError,))
            start_s = time.monotonic() - started
            wait_for(lambda: _cpu_group_up(url), 300, "the CPU group up in /readyz", interval_s=0.5,
                     tolerated=(httpx.HTTPError, KeyError))
            ready_s = time.monotonic() - started
            job = _first_job(url, clip)
            signalled = time.monotonic()
            server.send_signal(signal.SIGTERM)
            returncode = server.wait(timeout=180)
            stop_s = time.monotonic() - signalled
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        output = log_path.read_text(errors="replace")
    timings = job["timings"]
    work_s = timings["decode_s"] + timings["inference_s"] + (timings.get("final_inference_s") or 0.0)
    return {
        "start_s": round(start_s, 1),
        "cpu_group_up_s": round(ready_s, 1),
        "job_state": job["state"],
        "job_wall_s": timings["wall_s"],
        "job_work_s": round(work_s, 3),
        "job_waited_s": round(timings["wall_s"] - work_s, 2),
        "served_by": sorted({segment["served_by"]["group"] for segment in job["segments"] if segment.get("served_by")}),
        "stop_s": round(stop_s, 1),
        "stop_exit_status": returncode,
        "controller_gave_up": "failed to shut down" in output,
    }


def _cpu_group_up(url: str) -> bool:
    return httpx.get(f"{url}/readyz", timeout=10).json()["groups"]["cpu"]["status"] == "up"


def _first_job(url: str, clip: pathlib.Path) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=120) as client:
        with open(clip, "rb") as body:
            uploaded = client.post("/v1/files", data={"purpose": "vision"}, files={"file": (clip.name, body, "video/mp4")})
        uploaded.raise_for_status()
        created = client.post("/v1/video/jobs", json={"file_id": uploaded.json()["id"], "question": "What happens?",
                                                      "segment_s": SEGMENT_S})
        created.raise_for_status()
        job_id = created.json()["id"]

        def ended() -> dict[str, Any] | None:
            body = client.get(f"/v1/video/jobs/{job_id}").json()
            return body if body["state"] in ("succeeded", "failed", "cancelled") else None

        return wait_for(ended, 300, "the first job's end", interval_s=0.2, tolerated=(httpx.HTTPError,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=pathlib.Path, help="another checkout to run first, for a before/after")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    clip = long_video(CLIP_S, fps=2)
    report: dict[str, Any] = {}
    for label, checkout in (("baseline", args.baseline), ("this checkout", ROOT)):
        if checkout is not None:
            logger.info("%s: %s", label, checkout)
            report[label] = run_once(checkout.resolve(), clip)
            logger.info("%s", report[label])
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for label, figures in report.items():
        print(f"{label}: started in {figures['start_s']} s, CPU group up at {figures['cpu_group_up_s']} s; first job {figures['job_state']} in {figures['job_wall_s']} s "
              f"for {figures['job_work_s']} s of work (waited {figures['job_waited_s']} s; served by "
              f"{', '.join(figures['served_by'])}); stopped {figures['stop_s']} s after SIGTERM, exit status "
              f"{figures['stop_exit_status']}, controller gave up: {figures['controller_gave_up']}")


if __name__ == "__main__":
    main()
