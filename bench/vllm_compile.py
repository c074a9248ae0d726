"""What vLLM's compiled mode costs on this machine against eager: start-up seconds and peak memory, one start each.

Each start runs the mid-size model (:mod:`bench.mid_model`) as the CPU group's vLLM link does (our
:class:`~models.engines.vllm.adapter.VllmAdapter`, fp32, 2 threads, 16 sequences of 4096 tokens) in vLLM's own
environment, in a process of its own, with a fresh compile cache (``VLLM_CACHE_ROOT``) shared by the three:

  eager      ``vllm_compile: eager``;
  compiled   ``vllm_compile: auto`` (compiled on the CPU), the cache empty: the first start on a node;
  cached     the same again: every later start (a restart, another replica on the node).

Prints each start's seconds (the adapter's load: vLLM's engine up, warmed by vLLM's own dummy run) and the peak
resident memory of the process and its children (vLLM's engine core and worker), sampled every 0.2 s; and the
compile cache's size. The requests/s each mode gives are bench/engines.py's (``bare_vllm`` against
``bare_vllm_eager``, ``ours_vllm``).

Usage: .venv/bin/python -m bench.vllm_compile [--json]
Needs vLLM's environment (bin/ensure-vllm-venv).
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import psutil

from bench.mid_model import ensure_mid_model
from models.engines.vllm import DEFAULT_VLLM_PYTHON

ROOT = pathlib.Path(__file__).resolve().parent.parent
THREADS = 2

SCRIPT = """
import json, sys, time
from memory.budget import MemoryBudget
from memory.strategy import parse_strategy
from models.engines.vllm.memory_plan import VllmShape
from models.engines.vllm.adapter import VllmAdapter, VllmSettings

path, mode = sys.argv[1], sys.argv[2]
budget = MemoryBudget(device="cpu", weights_bytes=8 * 2**30, limit_bytes=8 * 2**30, available_bytes=8 * 2**30,
                      context_bytes=0, reserve_bytes=0)
shape = VllmShape(kv_bytes_per_token=8192, max_model_len=4096, max_num_seqs=16)
settings = VllmSettings(shape=shape, limit_mm_per_prompt={"image": 1, "video": 1}, share=1.0, num_threads=%d,
                        compile=mode)
adapter = VllmAdapter(path, parse_strategy("fp32", "cpu", "vllm"), settings=settings, weights_bytes=800 * 2**20,
                      budget=lambda: budget)
started = time.perf_counter()
adapter.load()
seconds = time.perf_counter() - started
compiled = adapter.compile_plan.compiled
adapter.unload()
print(json.dumps({"seconds": seconds, "compiled": compiled}))
""" % THREADS


def _tree_rss_bytes(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def start_once(model: pathlib.Path, mode: str, cache: pathlib.Path) -> dict[str, Any]:
    env = {**os.environ, "VLLM_CACHE_ROOT": str(cache), "VLLM_CPU_OMP_THREADS_BIND": f"0-{THREADS - 1}",
           "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([str(DEFAULT_VLLM_PYTHON), "-c", SCRIPT, str(model), mode], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    watched = psutil.Process(process.pid)

    def sample() -> None:
        nonlocal peak
        while process.poll() is None:
            try:
                peak = max(peak, _tree_rss_bytes(watched))
            except psutil.NoSuchProcess:
                return
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate(timeout=1800)
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"the {mode} start failed: {stderr[-2000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {**result, "peak_rss_bytes": peak}


def _folder_bytes(folder: pathlib.Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=pathlib.Path, default=pathlib.Path("bench/results/mid-qwen2-vl"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not DEFAULT_VLLM_PYTHON.is_file():
        print(f"vLLM's environment is not built ({DEFAULT_VLLM_PYTHON}): run bin/ensure-vllm-venv", file=sys.stderr)
        return 2
    model = ensure_mid_model(args.model_dir).resolve()
    cache = pathlib.Path(tempfile.mkdtemp(prefix="vd-compile-cache-"))
    try:
        report = {name: start_once(model, mode, cache) for name, mode in
                  (("eager", "eager"), ("compiled", "compiled"), ("cached", "compiled"))}
        report["compile_cache_bytes"] = _folder_bytes(cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for name in ("eager", "compiled", "cached"):
        start = report[name]
        print(f"{name:9s} start {start['seconds']:6.1f} s, peak RSS {start['peak_rss_bytes'] / 2**30:.2f} GiB "
              f"({start['seconds'] / report['eager']['seconds']:.2f}x eager's start)")
    print(f"compile cache {report['compile_cache_bytes'] / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
