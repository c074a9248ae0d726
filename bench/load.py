"""Load time and peak memory while loading, per precision, against plain baselines.

For each precision, in a fresh process (so peaks are not hidden by an earlier load), both
plain ``from_pretrained`` ("plain") and the way ``memory.loader`` loads ("ours": the same
call inside ``memory.host_heap.returning_freed_memory``):

* time: ``from_pretrained`` wall time against copying the same safetensors bytes
  into fresh memory (page cache warm for both), as a ratio; target 1.3x;
* peak: the largest anonymous memory (``RssAnon``, sampled every millisecond)
  above the pre-load level while loading, against the loaded model's bytes,
  as a ratio; target 1.5x. Anonymous memory, because transformers maps the
  safetensors files and file-backed pages are not what runs a host out of memory.

The model is a random-weight SmolVLM-500M (507M parameters) saved in fp32, so
bf16 is the "bf16 from an fp32 checkpoint" case.

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
import contextlib, json, pathlib, sys, threading, time
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


class PeakSampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.running = rss_anon_bytes(), True

    def run(self):
        while self.running:
            self.peak = max(self.peak, rss_anon_bytes())
            time.sleep(0.001)


files = sorted(folder.glob("*.safetensors"))
for path in files:  # warm the page cache for both timings
    path.read_bytes()
started = time.perf_counter()
copies = []
for path in files:  # one copy each, from the page cache into fresh memory
    copy = bytearray(path.stat().st_size)
    with open(path, "rb") as handle:
        handle.readinto(copy)
    copies.append(copy)
copy_seconds = time.perf_counter() - started
copied_bytes = sum(len(copy) for copy in copies)
del copies

strategy = parse_strategy(precision, "cpu")
baseline = rss_anon_bytes()
sampler = PeakSampler()
sampler.start()
started = time.perf_counter()
# As memory.loader loads (mode "ours"), or plain from_pretrained (mode "plain").
guard = returning_freed_memory() if mode == "ours" else contextlib.nullcontext()
with guard:
    model = transformers.AutoModelForImageTextToText.from_pretrained(folder, **strategy.from_pretrained_kwargs())
load_seconds = time.perf_counter() - started
sampler.running = False
sampler.join()
final = rss_anon_bytes()
print(json.dumps({
    "mode": mode, "precision": precision, "copy_seconds": copy_seconds, "copied_bytes": copied_bytes, "load_seconds": load_seconds,
    "model_bytes": measure_model_bytes(model), "peak_above_baseline_bytes": max(sampler.peak, final) - baseline,
    "final_above_baseline_bytes": final - baseline,
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
    from models.reference_configs import build_random_model

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="vd-load-"))
    rows = []
    try:
        folder = build_random_model(args.model, workdir / args.model)
        for precision in args.precisions.split(","):
            for mode in ("plain", "ours"):
                completed = subprocess.run(
                    [sys.executable, "-c", _CHILD, str(folder), precision, mode],
                    capture_output=True, text=True, check=True, timeout=1200,
                )
                row = json.loads(completed.stdout.strip().splitlines()[-1])
                row["time_ratio"] = row["load_seconds"] / row["copy_seconds"]
                row["peak_ratio"] = row["peak_above_baseline_bytes"] / row["model_bytes"]
                rows.append(row)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    logger.info(
        "%-5s %-6s %9s %9s %7s %12s %12s %7s", "prec", "loader", "load s", "copy s", "time x", "model MiB", "peak MiB", "peak x"
    )
    for row in rows:
        logger.info(
            "%-5s %-6s %9.2f %9.2f %6.2fx %12.1f %12.1f %6.2fx",
            row["precision"], row["mode"], row["load_seconds"], row["copy_seconds"], row["time_ratio"],
            row["model_bytes"] / 2**20, row["peak_above_baseline_bytes"] / 2**20, row["peak_ratio"],
        )
    load_chart(rows, args.model, args.plot_dir / "load-per-precision.png")
    if args.json:
        sys.stdout.write(json.dumps({"model": args.model, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
