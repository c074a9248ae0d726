"""GPU drill: two processes on a 0.5 share each of one device load within their shares; a third is
refused by its budget, not by a crash. Plain processes (no Ray): the same code the GPU group runs.

Run on a GPU machine from the repository root (prints one JSON report):

    python tests/gpu/share_drill.py [--model qwen2-vl-7b] [--share 0.5]

Each holder loads a random-weight model from a real config through the chain (bf16 -> int8 -> nf4)
under ``set_per_process_memory_fraction(share)``, then reserves the rest of its share for
activations (as a serving engine would), and waits. The third process measures its budget against
what is left on the device and must end in ``NothingFitsError`` with every attempt skipped.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

_HOLDER = r"""
import json, sys, time, torch
from memory.gpu import limit_to_share, measure_gpu_budget
from memory.estimate import DEFAULT_CUDA_CONTEXT_BYTES
from memory.chain_load import NothingFitsError
from memory.probe import MemorySnapshot
from memory.strategy import parse_chain
from models.adapters.loading import load_adapter
sys.path.insert(0, "tests")
from weights_only import weights_only_adapter

path, share, role = sys.argv[1], float(sys.argv[2]), sys.argv[3]
torch.cuda.init()
limit_to_share(share)
chain = parse_chain(["bf16", "int8", "nf4"], "cuda")
budget = lambda strategy: measure_gpu_budget(share=share, context_bytes=DEFAULT_CUDA_CONTEXT_BYTES, reserve_bytes=0)
try:
    loaded = load_adapter(path, chain, measure_budget=budget, make_adapter=weights_only_adapter)
except NothingFitsError as error:
    print(json.dumps({"role": role, "outcome": "refused", "message": str(error), "report": error.report.to_dict()}), flush=True)
    sys.exit(0)
total = torch.cuda.get_device_properties(0).total_memory
held = torch.cuda.memory_reserved(0)
activations = torch.empty(max(0, int(share * total) - held - 256 * 1024**2), dtype=torch.uint8, device="cuda")
(gpu,) = MemorySnapshot.measure().gpus
print(json.dumps({"role": role, "outcome": "loaded", "report": loaded.report.to_dict(), "gpu": gpu.to_dict()}), flush=True)
time.sleep(float(sys.argv[4]))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2-vl-7b")
    parser.add_argument("--share", type=float, default=0.5)
    args = parser.parse_args()
    import torch

    from models.adapters.reference_configs import build_random_model

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="vd-drill-"))
    model = build_random_model(args.model, workdir / args.model, dtype=torch.bfloat16)
    env = {**os.environ, "PYTORCH_ALLOC_CONF": "expandable_segments:True"}

    def start(role: str, hold_s: float) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(model), str(args.share), role, str(hold_s)],
            stdout=subprocess.PIPE, text=True, env=env,
        )

    report: dict = {"model": args.model, "share": args.share, "processes": []}
    holders = [start("holder-1", 120)]
    report["processes"].append(json.loads(holders[0].stdout.readline()))
    holders.append(start("holder-2", 90))
    report["processes"].append(json.loads(holders[1].stdout.readline()))
    third = start("third", 0)
    report["processes"].append(json.loads(third.stdout.readline()))
    third.wait(timeout=300)
    for name, command in (
        ("summary", [sys.executable, "-m", "memory", "summary", "--json"]),
        ("plan", [sys.executable, "-m", "memory", "plan", str(model), "--gpu-share", str(args.share), "--json"]),
    ):
        completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
        report[name] = json.loads(completed.stdout) if completed.stdout.strip() else completed.stderr
    for holder in holders:
        holder.terminate()
        holder.wait(timeout=60)
    outcomes = [process["outcome"] for process in report["processes"]]
    report["passed"] = outcomes == ["loaded", "loaded", "refused"]
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
