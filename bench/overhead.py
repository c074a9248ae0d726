"""Where a request's CPU goes: each process of our stack against bare vLLM's API server, on the same load.

One server at a time, alone on the machine, on the mid-size random Qwen2-VL (:mod:`bench.mid_model`), fp32,
2 threads, a 224 px PNG and a question, 32 new tokens with ``ignore_eos``, closed-loop clients (``--loads``: a new
image on each request or one repeated, how many clients, how many requests):

  bare_vllm      vLLM's own OpenAI server at its defaults (``--eager`` for ``--enforce-eager``);
  ours_vllm      our app, its CPU group on ``engine: vllm`` (``max_batch_size`` 16, as bench/engines.py; ``--config``
                 for other settings);
  ours_instant   our app on the built-in tiny model (transformers engine, 1 new token): an engine that answers at
                 once, so the stack's own cost is all there is. Its requests/s is the layer's ceiling; run with
                 ``--ingress-replicas 1,2`` to see how it grows with ingress replicas.

For every process of the server (Serve's proxy, the ingress, the replica, vLLM's engine core, Ray's own; vLLM's
API server and engine core for bare vLLM) it reads the CPU seconds the process spent during the load
(``/proc``, user + system) and, with py-spy sampling each Python process at ``--rate`` Hz, the frames that
spent them. vLLM's worker process runs the model; its samples inside a forward pass (``execute_model``) are the
engine's work, and everything else, in every process, is the layer around it. Also measured: each process's
CPU with no request in flight, and how busy the machine was during each load. Prints per process: CPU ms per
request, the share outside the forward pass, and the top frames (by own time, and by the deepest frame of our,
vLLM's or Serve's code); ``--json`` for all of it. py-spy costs CPU itself: ``--rate 0`` for undisturbed
requests/s.

Usage: .venv/bin/python -m bench.overhead [--servers bare_vllm,ours_vllm] [--loads new:8:24,repeated:16:32]
       [--eager] [--ingress-replicas 1] [--rate 67] [--top 12] [--json]
Needs vLLM's environment (bin/ensure-vllm-venv) for bare_vllm and ours_vllm, and py-spy (the test extras).
"""

import argparse
import collections
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterator

import psutil

from bench.engines import (  # noqa: I001 - sets Ray's environment first
    MAX_TOKENS,
    OURS_TUNED,
    _chat,
    _load,
    _merged,
    bare_vllm,
    image_data_url,
    load_report,
    ours,
)
from bench.mid_model import ensure_mid_model
from bench.plots import DOCS_DIR, overhead_chart
from models.adapters.tiny import ensure_tiny_model
from models.engines.vllm import DEFAULT_VLLM_PYTHON

logger = logging.getLogger("bench.overhead")
PY_SPY = pathlib.Path(sys.executable).with_name("py-spy")
FORWARD_FRAMES = ("execute_model (",)  # a sample with one of these in its stack is inside the engine's forward pass
_LINE_NUMBER = re.compile(r":\d+\)$")
CHART = DOCS_DIR / "overhead-layer.png"


def role_of(process: psutil.Process, server_pids: set[int]) -> str | None:
    """What a process is to the server, as the report names it (``None``: it ended while being read)."""
    try:
        command = " ".join(process.cmdline())
        name = process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if "EngineCore" in command or "EngineCore" in name:
        return "vllm engine core"
    if "VLLM::Worker" in command or "VLLM::Worker" in name:
        return "vllm worker"
    if "raylet" in name or "gcs_server" in name or "/raylet" in command or "/gcs_server" in command:
        return "ray (raylet, gcs)"
    if process.pid in server_pids:
        return "vllm api server"
    for marker, role in (("ProxyActor", "serve proxy"), (":Ingress", "ingress"), (":cpu_group", "cpu replica"),
                         (":JobRunner", "job runner"), ("ServeController", "serve controller"),
                         ("grammar_server", "compile server")):
        if marker in command:
            return role
    if command.startswith("ray::") or "default_worker.py" in command or "ray/_private" in command:
        return "ray (other workers)"
    return f"other ({name})"


def server_processes(root_pids: set[int]) -> dict[int, tuple[str, psutil.Process]]:
    """Every process of the server: ``root_pids`` and their descendants, by role."""
    found: dict[int, tuple[str, psutil.Process]] = {}
    for pid in root_pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            parent = psutil.Process(pid)
            for process in [parent, *parent.children(recursive=True)]:
                role = role_of(process, root_pids)
                if role is not None:
                    found[process.pid] = (role, process)
    return found


def _cpu_s(process: psutil.Process) -> float:
    with contextlib.suppress(psutil.NoSuchProcess):
        times = process.cpu_times()
        return times.user + times.system
    return 0.0


def _is_python(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        return "python" in pathlib.Path(process.exe()).name or process.cmdline()[0].startswith("ray::")
    return False


@dataclasses.dataclass
class Profile:
    role: str
    pid: int
    cpu_s: float
    samples: collections.Counter  # collapsed stack -> count


@contextlib.contextmanager
def profiled(processes: dict[int, tuple[str, psutil.Process]], rate: int, folder: pathlib.Path) -> Iterator[list[Profile]]:
    """py-spy on every Python process (non-blocking, so it does not pause them) and each one's CPU seconds, while
    the body runs; the profiles are filled in when it ends."""
    profiles: list[Profile] = []
    before = {pid: _cpu_s(process) for pid, (_, process) in processes.items()}
    spies: dict[int, tuple[subprocess.Popen, pathlib.Path]] = {}
    for pid, (_, process) in processes.items():
        if rate > 0 and _is_python(process):
            output = folder / f"{pid}.txt"
            spies[pid] = (subprocess.Popen(
                [str(PY_SPY), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--nonblocking",
                 "--output", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), output)
    if spies:
        time.sleep(1.0)  # py-spy attaches
    yield profiles
    after = {pid: _cpu_s(process) for pid, (_, process) in processes.items()}
    for spy, _ in spies.values():
        spy.send_signal(signal.SIGINT)
    for pid, (role, _) in processes.items():
        samples: collections.Counter = collections.Counter()
        if pid in spies:
            spy, output = spies[pid]
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
            if output.is_file():
                for line in output.read_text().splitlines():
                    stack, _, count = line.rpartition(" ")
                    if stack and count.isdigit():
                        samples[stack] += int(count)
        profiles.append(Profile(role, pid, max(0.0, after[pid] - before[pid]), samples))


def _frame_name(frame: str) -> str:
    """``function (path/to/file.py:123)`` as ``function (file's last two parts)``: lines folded together."""
    frame = _LINE_NUMBER.sub(")", frame)
    name, _, where = frame.partition(" (")
    parts = where.rstrip(")").split("/")
    return f"{name} ({'/'.join(parts[-2:])})"


_ENTRY_PACKAGES = ("deployments/", "models/", "memory/", "vllm/", "ray/serve/", "uvicorn/", "starlette/", "fastapi/")


def _entry_frame(stack: list[str]) -> str:
    """The deepest frame of our code (or else vLLM's, Ray Serve's, the HTTP server's) in a stack: where the time was
    asked for. py-spy names files from their package (``ray/serve/...``), or by full path outside site-packages."""
    for package in _ENTRY_PACKAGES:
        for frame in reversed(stack):
            where = frame.rpartition(" (")[2]
            if where.startswith(package) or f"/{package}" in where:
                return _frame_name(frame)
    return _frame_name(stack[-1]) if stack else "?"


def summarize(profiles: list[Profile], requests: int, top: int) -> dict[str, Any]:
    """Per role: CPU ms per request, the share of samples in a forward pass (vLLM's worker), the top frames by own
    time and by entry frame."""
    roles: dict[str, dict[str, Any]] = {}
    for profile in profiles:
        entry = roles.setdefault(profile.role, {"processes": 0, "cpu_ms_per_request": 0.0, "samples": collections.Counter()})
        entry["processes"] += 1
        entry["cpu_ms_per_request"] += 1000 * profile.cpu_s / requests
        entry["samples"].update(profile.samples)
    report: dict[str, Any] = {}
    for role, entry in sorted(roles.items(), key=lambda item: -item[1]["cpu_ms_per_request"]):
        samples: collections.Counter = entry["samples"]
        total = sum(samples.values())
        own: collections.Counter = collections.Counter()
        entries: collections.Counter = collections.Counter()
        forward = 0
        for stack, count in samples.items():
            frames = stack.split(";")
            own[_frame_name(frames[-1])] += count
            entries[_entry_frame(frames)] += count
            if any(marker in stack for marker in FORWARD_FRAMES):
                forward += count
        if role != "vllm worker":
            outside = 1.0
        else:  # unsampled (--rate 0): all of it counted as the engine's
            outside = 1.0 - forward / total if total else 0.0
        report[role] = {
            "processes": entry["processes"],
            "cpu_ms_per_request": round(entry["cpu_ms_per_request"], 1),
            "layer_cpu_ms_per_request": round(entry["cpu_ms_per_request"] * outside, 1),
            "samples": total,
            "forward_share": round(forward / total, 3) if total else None,
            "top_own": [(name, round(count / total, 3)) for name, count in own.most_common(top)] if total else [],
            "top_entry": [(name, round(count / total, 3)) for name, count in entries.most_common(top)] if total else [],
        }
    return report


def _warm_up(base_url: str, model: str) -> None:
    import httpx

    with httpx.Client(base_url=base_url, timeout=600) as client:
        for seed in (999_001, 999_002, 999_003):
            _chat(client, model, [{"type": "image_url", "image_url": {"url": image_data_url(seed)}}, {"type": "text", "text": "Hi"}])


def idle_cpu(processes: dict[int, tuple[str, psutil.Process]], seconds: float) -> dict[str, float]:
    """Per role, the share of a core its processes spend with no request in flight."""
    before = {pid: _cpu_s(process) for pid, (_, process) in processes.items()}
    time.sleep(seconds)
    shares: collections.Counter = collections.Counter()
    for pid, (role, process) in processes.items():
        shares[role] += (_cpu_s(process) - before[pid]) / seconds
    return {role: round(share, 3) for role, share in shares.most_common()}


def _niceness(processes: dict[int, tuple[str, psutil.Process]]) -> dict[str, list[int]]:
    nice: dict[str, list[int]] = collections.defaultdict(list)
    for role, process in processes.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            nice[role].append(process.nice())
    return dict(nice)


@dataclasses.dataclass(frozen=True)
class Load:
    """One load to measure: a new image on each request or one repeated, ``clients`` closed-loop clients."""

    image: str
    clients: int
    requests: int

    @property
    def name(self) -> str:
        return f"{self.image} image, {self.clients} clients"

    @classmethod
    def parse(cls, text: str) -> "Load":
        image, clients, requests = text.split(":")
        if image not in ("new", "repeated"):
            raise ValueError(f"a load's image is new or repeated, not {image!r}")
        return cls(image, int(clients), int(requests))


def measure_load(
    base_url: str, model: str, processes: dict[int, tuple[str, psutil.Process]], load: Load, args: argparse.Namespace,
    folder: pathlib.Path, max_tokens: int,
) -> dict[str, Any]:
    repeated = image_data_url(0)
    seed = 5000 + 1000 * load.clients
    image_for = (lambda number: repeated) if load.image == "repeated" else (lambda number: image_data_url(seed + number))
    machine_before = psutil.cpu_times()
    with profiled(processes, args.rate, folder) as profiles:
        figures = _load(base_url, model, load.clients, image_for, total=load.requests, max_tokens=max_tokens)
        machine_after = psutil.cpu_times()
    spent = {field: getattr(machine_after, field) - getattr(machine_before, field) for field in machine_before._fields}
    figures["machine_busy_share"] = round(1 - (spent["idle"] + spent.get("iowait", 0.0)) / sum(spent.values()), 3)
    roles = summarize(profiles, load.requests, args.top)
    layer = sum(entry["layer_cpu_ms_per_request"] for entry in roles.values())
    logger.info("  %s: %.2f req/s, p50 %.2f s, layer %.0f ms a request", load.name, figures["req_per_s"], figures["p50_s"], layer)
    return {"load": figures, "layer_cpu_ms_per_request": round(layer, 1), "roles": roles}


def run_one(
    base_url: str, model: str, roots: set[int], args: argparse.Namespace, folder: pathlib.Path, max_tokens: int
) -> dict[str, Any]:
    _warm_up(base_url, model)
    processes = server_processes(roots)
    logger.info("  processes: %s", sorted(collections.Counter(role for role, _ in processes.values()).items()))
    idle = idle_cpu(processes, args.idle_s)
    logger.info("  idle, share of a core: %s", idle)
    loads = {load.name: measure_load(base_url, model, processes, load, args, folder, max_tokens) for load in args.loads}
    return {"idle_core_share": idle, "niceness": _niceness(processes), "loads": loads}


def _ray_roots() -> set[int]:
    """The pids of this Ray instance's own processes (the raylet, the GCS): every worker descends from them."""
    import ray

    session = pathlib.Path(ray._private.worker._global_node.get_session_dir_path())  # noqa: SLF001 - the session's pids
    roots: set[int] = set()
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or ())
        if str(session.parent) in command and ("raylet" in command or "gcs_server" in command):
            roots.add(process.pid)
    return roots


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="bare_vllm,ours_vllm")
    parser.add_argument("--loads", default="new:8:24", type=lambda text: [Load.parse(part) for part in text.split(",")],
                        help="image:clients:requests, comma-separated; image is new or repeated")
    parser.add_argument("--eager", action="store_true", help="bare vLLM with --enforce-eager")
    parser.add_argument("--ingress-replicas", default="1", help="ours: comma-separated ingress replica counts to run")
    parser.add_argument("--idle-s", type=float, default=10.0, help="seconds of no load to measure background CPU")
    parser.add_argument("--rate", type=int, default=67, help="py-spy samples per second; 0: no py-spy (CPU seconds only, the load undisturbed)")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--config", type=json.loads, default={},
                        help="ours: JSON merged into the app's config, e.g. '{\"jobs\": {\"enabled\": false}}'")
    parser.add_argument("--model-dir", type=pathlib.Path, default=pathlib.Path("bench/results/mid-qwen2-vl"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--chart-load", default="new image, 8 clients", help="the load the chart shows")
    parser.add_argument("--chart-from", nargs="*", type=pathlib.Path, default=[],
                        help="draw docs/overhead-layer.png from saved --json reports (LABEL=FILE), measuring nothing")
    args = parser.parse_args()
    if args.chart_from:
        draw_chart([_labelled_report(text) for text in map(str, args.chart_from)], args.chart_load)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not PY_SPY.is_file():
        print(f"py-spy is not installed beside {sys.executable}: run bin/ensure-venv (the test extras)", file=sys.stderr)
        return 2
    servers = args.servers.split(",")
    if {"bare_vllm", "ours_vllm"} & set(servers) and not DEFAULT_VLLM_PYTHON.is_file():
        print(f"vLLM's environment is not built ({DEFAULT_VLLM_PYTHON}): run bin/ensure-vllm-venv", file=sys.stderr)
        return 2
    model_path = ensure_mid_model(args.model_dir).resolve()
    report: dict[str, Any] = {"servers": {}}
    folder = pathlib.Path(tempfile.mkdtemp(prefix="vd-overhead-"))
    try:
        if "bare_vllm" in servers:
            logger.info("bare vLLM%s", " (eager)" if args.eager else "")
            with bare_vllm(model_path, model_path, eager=args.eager) as (url, pid):
                report["servers"]["bare_vllm"] = run_one(url, "mid", {pid}, args, folder, MAX_TOKENS)
        for name, engine, path, tokens in (("ours_vllm", "vllm", model_path, MAX_TOKENS),
                                           ("ours_instant", "transformers", ensure_tiny_model(), 1)):
            if name not in servers:
                continue
            for replicas in [int(count) for count in args.ingress_replicas.split(",")]:
                logger.info("%s, %d ingress replica(s)", name, replicas)
                overrides = _merged(_merged(OURS_TUNED, args.config), {"ingress": {"num_replicas": replicas}})
                with ours(path, engine, None, overrides) as (url, model, _):
                    report["servers"][f"{name}/ingress={replicas}"] = run_one(url, model, _ray_roots(), args, folder, tokens)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    draw_chart([("", report)], args.chart_load)
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        print()
    else:
        _print(report)
    return 0


def _labelled_report(text: str) -> tuple[str, dict[str, Any]]:
    label, _, path = text.rpartition("=")
    return label, load_report(pathlib.Path(path))


def draw_chart(reports: list[tuple[str, dict[str, Any]]], load_name: str, path: pathlib.Path = CHART) -> None:
    """The layer's CPU a request by process, one bar per server of each report, for ``load_name``."""
    bars = []
    for label, report in reports:
        for server, measured in report["servers"].items():
            roles = measured["loads"].get(load_name, {}).get("roles")
            if roles:
                name = f"{server.removesuffix('/ingress=1')}{f' ({label})' if label else ''}"
                bars.append((name, {role: entry["layer_cpu_ms_per_request"] for role, entry in roles.items()
                                    if entry["layer_cpu_ms_per_request"] >= 0.5}))
    if bars:
        overhead_chart(bars, f"Where a request's CPU goes beside the model: {load_name}", path)


def _print(report: dict[str, Any]) -> None:
    for name, server in report["servers"].items():
        idle = ", ".join(f"{role} {100 * share:.1f}%" for role, share in server["idle_core_share"].items() if share >= 0.001)
        print(f"\n{name}. With no request in flight, share of a core: {idle}")
        for load_name, measured in server["loads"].items():
            load = measured["load"]
            print(f"  {load_name}: {load['req_per_s']:.2f} req/s, p50 {load['p50_s']:.2f} s, machine busy "
                  f"{100 * load['machine_busy_share']:.0f}%; CPU outside the engine's forward passes: "
                  f"{measured['layer_cpu_ms_per_request']:.0f} ms a request")
            for role, entry in measured["roles"].items():
                share = f", {100 * entry['forward_share']:.0f}% of its samples in forward" if entry["forward_share"] and role == "vllm worker" else ""
                print(f"    {role} ({entry['processes']}): {entry['cpu_ms_per_request']:.0f} ms CPU a request, "
                      f"{entry['layer_cpu_ms_per_request']:.0f} outside forward{share}")
                for frame, frame_share in entry["top_entry"][:5]:
                    print(f"        entry {100 * frame_share:4.1f}%  {frame}")
                for frame, frame_share in entry["top_own"][:5]:
                    print(f"        own   {100 * frame_share:4.1f}%  {frame}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
