"""Load time and peak memory while loading, per precision, against plain baselines.

For each precision, in a fresh process (so peaks are not hidden by an earlier load), both
plain ``from_pretrained`` ("plain") and the way ``memory.chain_load`` loads ("ours": the same
call inside ``memory.host_heap.returning_freed_memory``):

* time: ``from_pretrained`` wall time against copying the same safetensors bytes
  into fresh memory (page cache warm for both), as a ratio; target 1.3x. As in a replica, the chain is
  priced from the config first (``memory.chain_estimate.estimate_chain``), which imports the model's transformers
  module (about 1.8 s for SmolVLM, once per process); that is printed as "estimate s", outside the load;
* peak: the largest anonymous memory (``RssAnon``, sampled every millisecond)
  above the pre-load level while loading, against the loaded model's bytes,
  as a ratio; target 1.5x. Anonymous memory, because transformers maps the
  safetensors files and file-backed pages are not what runs a host out of memory.
  It is sampled by a separate process, so that sampling never takes the GIL from transformers' loading
  threads (an earlier version sampled from a thread of the loading process).

The model is a random-weight SmolVLM-500M (507M parameters) saved in fp32, so
bf16 is the "bf16 from an fp32 checkpoint" case.

For int8 and nf4, two more loads through the weight cache (``models.weight_cache``):
"cache-cold" quantizes and stores the entry, "cache-warm" (a fresh process) reads it back, its SHA-256 check
included; the warm load is also compared with copying the entry's own bytes.

Usage: .venv/bin/python -m bench.load [--model smolvlm-500m] [--precisions fp32,bf16,int8,nf4] [--json]
"""

import argparse
import json
import logging
import pathlib
import shutil
import subprocess
import sys
import tempfile

from bench.plots import DOCS_DIR, load_chart

logger = logging.getLogger("bench.load")

_CHILD = r'''
import contextlib, json, pathlib, sys, time
import transformers
from memory.estimate import measure_model_bytes
from memory.host_heap import returning_freed_memory
from memory.strategy import parse_strategy

transformers.utils.logging.disable_progress_bar()
folder, precision, mode = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]


def rss_anon_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


class PeakSampler:
    """RssAnon of this process every millisecond, read by a process of its own: a sampling thread here would
    take the GIL from the loader's threads a thousand times a second and slow the load it measures."""

    _CODE = (
        "import sys, time\n"
        "path, peak = f'/proc/{sys.argv[1]}/status', 0\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    try:\n"
        "        with open(path) as status:\n"
        "            for line in status:\n"
        "                if line.startswith('RssAnon:'):\n"
        "                    peak = max(peak, int(line.split()[1]) * 1024)\n"
        "    except OSError:\n"
        "        break\n"
        "    if sys.stdin in __import__('select').select([sys.stdin], [], [], 0.001)[0]:\n"
        "        break\n"
        "print(peak, flush=True)\n"
    )

    def start(self):
        import os, subprocess
        self._process = subprocess.Popen(
            [sys.executable, "-c", self._CODE, str(os.getpid())], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._process.stdout.readline()  # sampling from here on

    def stop(self):
        self._process.stdin.write("stop\n")
        self._process.stdin.flush()
        self.peak = int(self._process.stdout.readline())
        self._process.wait()


cache_root = pathlib.Path(sys.argv[4]) if len(sys.argv) > 4 else None


def copy_seconds_of(files):
    for path in files:  # warm the page cache for both timings
        path.read_bytes()
    started = time.perf_counter()
    copies = []
    for path in files:  # one copy each, from the page cache into fresh memory
        copy = bytearray(path.stat().st_size)
        with open(path, "rb") as handle:
            handle.readinto(copy)
        copies.append(copy)
    return time.perf_counter() - started


entry_files = sorted(cache_root.glob("entries/*/*.safetensors")) if mode == "cache-warm" else []
entry_copy_seconds = copy_seconds_of(entry_files) if entry_files else None
files = sorted(folder.glob("*.safetensors"))
copy_seconds = copy_seconds_of(files)
copied_bytes = sum(path.stat().st_size for path in files)

strategy = parse_strategy(precision, "cpu")
# A replica prices its chain from the config before it loads (models.adapters.loading.load_adapter), which imports the
# model's transformers module; that one-off cost is timed here on its own, outside the load.
from memory.estimate import load_model_config
from memory.chain_estimate import estimate_chain
estimate_started = time.perf_counter()
estimate_chain(load_model_config(folder), (strategy,))
estimate_seconds = time.perf_counter() - estimate_started
if mode.startswith("cache"):  # imported before the clock starts, as a replica has it imported
    from models.weight_cache import WeightCache, load_through_cache
baseline = rss_anon_bytes()
sampler = PeakSampler()
sampler.start()
started = time.perf_counter()
# As memory.chain_load loads (mode "ours"), or plain from_pretrained (mode "plain").
guard = returning_freed_memory() if mode != "plain" else contextlib.nullcontext()
with guard:
    if mode.startswith("cache"):
        model, _ = load_through_cache(str(folder), strategy, WeightCache(cache_root, max_bytes=1 << 40))
    else:
        model = transformers.AutoModelForImageTextToText.from_pretrained(folder, **strategy.from_pretrained_kwargs())
load_seconds = time.perf_counter() - started
sampler.stop()
final = rss_anon_bytes()
print(json.dumps({
    "mode": mode, "precision": precision, "copy_seconds": copy_seconds, "copied_bytes": copied_bytes, "load_seconds": load_seconds,
    "model_bytes": measure_model_bytes(model), "peak_above_baseline_bytes": max(sampler.peak, final) - baseline,
    "final_above_baseline_bytes": final - baseline, "entry_copy_seconds": entry_copy_seconds,
    "estimate_seconds": estimate_seconds,
}))
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smolvlm-500m")
    parser.add_argument("--precisions", default="fp32,bf16,int8,nf4")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot-dir", type=pathlib.Path, default=DOCS_DIR, help="where the PNG chart goes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from models.adapters.reference_configs import build_random_model

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="vd-load-"))
    rows = []
    try:
        folder = build_random_model(args.model, workdir / args.model)
        for precision in args.precisions.split(","):
            modes = ("plain", "ours", "cache-cold", "cache-warm") if precision in ("int8", "nf4") else ("plain", "ours")
            cache_root = workdir / f"weight-cache-{precision}"
            for mode in modes:
                completed = subprocess.run(
                    [sys.executable, "-c", _CHILD, str(folder), precision, mode, str(cache_root)],
                    capture_output=True, text=True, check=True, timeout=1200,
                )
                row = json.loads(completed.stdout.strip().splitlines()[-1])
                row["time_ratio"] = row["load_seconds"] / row["copy_seconds"]
                row["peak_ratio"] = row["peak_above_baseline_bytes"] / row["model_bytes"]
                rows.append(row)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    logger.info(
        "%-5s %-10s %10s %9s %9s %7s %12s %12s %7s %18s", "prec", "loader", "estimate s", "load s", "copy s", "time x",
        "model MiB", "peak MiB", "peak x", "vs entry copy",
    )
    for row in rows:
        entry = row.get("entry_copy_seconds")
        logger.info(
            "%-5s %-10s %10.2f %9.2f %9.2f %6.2fx %12.1f %12.1f %6.2fx %18s",
            row["precision"], row["mode"], row["estimate_seconds"], row["load_seconds"], row["copy_seconds"], row["time_ratio"],
            row["model_bytes"] / 2**20, row["peak_above_baseline_bytes"] / 2**20, row["peak_ratio"],
            f"{row['load_seconds'] / entry:.2f}x of {entry:.2f} s" if entry else "",
        )
    load_chart(rows, args.model, args.plot_dir / "load-per-precision.png")
    if args.json:
        sys.stdout.write(json.dumps({"model": args.model, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
