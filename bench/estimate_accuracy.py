"""How close the config-only estimate is to the bytes a real load holds, per model and precision.

Loads each model for real on CPU (transformers + bitsandbytes) and compares
``memory.estimate`` against ``measure_model_bytes`` of the loaded model, next to
the naive rule ``accelerate estimate-memory`` uses (fp32 bytes / 2, / 4, / 8).
Models: the built-in tiny Qwen2-VL, and random-weight models from real configs
(SmolVLM-256M widths with 1+1 layers, 76M; SmolVLM-500M, 507M). Target: within 5%.

Usage: .venv/bin/python -m bench.estimate_accuracy [--models tiny,smolvlm-256m-reduced,smolvlm-500m] [--json]
"""

import argparse
import gc
import json
import logging
import pathlib
import shutil
import sys
import tempfile

import transformers

from bench.plots import DOCS_DIR, estimate_chart
from memory.cleanup import release_memory
from memory.estimate import build_meta_model, estimate_weights, load_model_config, measure_model_bytes
from memory.strategy import parse_strategy
from models.adapters.reference_configs import build_random_model
from models.adapters.tiny import build_tiny_model

logger = logging.getLogger("bench.estimate_accuracy")

PRECISIONS = ("fp32", "bf16", "int8", "nf4")
NAIVE_DIVISOR = {"fp32": 1, "bf16": 2, "int8": 4, "nf4": 8}


def _model_folder(name: str, workdir: pathlib.Path) -> pathlib.Path:
    folder = workdir / name
    if name == "tiny":
        build_tiny_model(folder)
    else:
        build_random_model(name, folder)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,smolvlm-256m-reduced,smolvlm-500m")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot-dir", type=pathlib.Path, default=DOCS_DIR, help="where the PNG chart goes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    transformers.utils.logging.disable_progress_bar()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="vd-estimate-"))
    rows = []
    try:
        for name in args.models.split(","):
            folder = _model_folder(name, workdir)
            config = load_model_config(folder)
            fp32_bytes = None
            for precision in PRECISIONS:
                strategy = parse_strategy(precision, "cpu")
                estimate = estimate_weights(build_meta_model(config, strategy.torch_dtype), strategy.torch_dtype, strategy.quantization)
                model = transformers.AutoModelForImageTextToText.from_pretrained(folder, **strategy.from_pretrained_kwargs())
                measured = measure_model_bytes(model)
                del model
                gc.collect()
                release_memory()
                if precision == "fp32":
                    fp32_bytes = measured
                naive = fp32_bytes // NAIVE_DIVISOR[precision]
                rows.append(
                    {
                        "model": name,
                        "precision": precision,
                        "estimate_bytes": estimate.total_bytes,
                        "measured_bytes": measured,
                        "error_pct": 100 * (estimate.total_bytes - measured) / measured,
                        "naive_bytes": naive,
                        "naive_error_pct": 100 * (naive - measured) / measured,
                    }
                )
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    logger.info("%-22s %-5s %14s %14s %8s %11s", "model", "prec", "estimate B", "measured B", "error", "naive error")
    for row in rows:
        logger.info(
            "%-22s %-5s %14d %14d %+7.2f%% %+10.1f%%",
            row["model"], row["precision"], row["estimate_bytes"], row["measured_bytes"], row["error_pct"], row["naive_error_pct"],
        )
    worst = max(abs(row["error_pct"]) for row in rows)
    logger.info("largest estimate error: %.3f%% (target: within 5%%)", worst)
    estimate_chart(rows, args.plot_dir / "estimate-per-precision.png")
    if args.json:
        sys.stdout.write(json.dumps({"rows": rows, "largest_error_pct": worst}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
