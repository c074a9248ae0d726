"""The mid-size model on a CPU group on ``engine: vllm`` with the default limits: does vLLM serve it?

The app's defaults but for the model (the mid-size random Qwen2-VL, :mod:`bench.mid_model`) and the CPU group's
engine: ``limits`` as shipped (8,192 prompt tokens), the group's 8 GiB, its chain. Prints each link's estimate by
part and the reserve its budget kept (whose activations), then one image question's answer and the headers that
say who served it. Before vLLM's links were priced by vLLM's own activations, this skipped vLLM: "estimate
exceeds budget", the transformers engine's eager-attention reserve taken from its budget.

Usage: .venv/bin/python -m bench.vllm_defaults [--model-dir bench/results/mid-qwen2-vl] [--json]
Needs vLLM's environment (bin/ensure-vllm-venv).
"""

import argparse
import json
import logging
import pathlib
import time

import httpx

from bench.engines import image_data_url
from bench.local_serve import local_serve  # noqa: I001 - sets Ray's environment first
from bench.mid_model import ensure_mid_model
from deployments.app import build_app

logger = logging.getLogger("bench.vllm_defaults")


def run(model_dir: pathlib.Path) -> dict:
    from ray import serve

    model = ensure_mid_model(model_dir)
    args = {"model": {"source": str(model)}, "gpu_group": {"enabled": False}, "cpu_group": {"engine": "vllm"}}
    with local_serve(num_cpus=2) as (base_url, _):
        serve.run(build_app(args), name="vllm-defaults", route_prefix="/")
        deadline = time.monotonic() + 900
        while httpx.get(f"{base_url}/readyz", timeout=30).json().get("status") != "ready":
            if time.monotonic() > deadline:
                raise TimeoutError("the app was not ready within 900 s")
            time.sleep(2)
        (replica,) = httpx.get(f"{base_url}/v1/memory", timeout=30).json()["groups"]["cpu"]
        model_id = httpx.get(f"{base_url}/v1/models", timeout=30).json()["data"][0]["id"]
        started = time.perf_counter()
        answer = httpx.post(f"{base_url}/v1/chat/completions", timeout=600, json={
            "model": model_id, "max_tokens": 8,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": image_data_url(0)}}, {"type": "text", "text": "What is it?"}]}],
        })
        return {
            "status": answer.status_code,
            "seconds": round(time.perf_counter() - started, 2),
            "served_by": {key: value for key, value in answer.headers.items() if key.startswith("x-served-by")},
            "usage": answer.json().get("usage"),
            "attempts": [
                {key: attempt[key] for key in ("strategy", "outcome", "estimate_bytes", "budget_bytes", "estimate_parts", "reserve", "reason")}
                for attempt in replica["load_report"]["attempts"]
            ],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=pathlib.Path, default=pathlib.Path("bench/results/mid-qwen2-vl"))
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run(arguments.model_dir)
    if arguments.json:
        print(json.dumps(result, indent=1))
        return
    for attempt in result["attempts"]:
        logger.info("%s: %s, estimate %d = %s against budget %d (%s)", attempt["strategy"], attempt["outcome"],
                    attempt["estimate_bytes"], attempt["estimate_parts"], attempt["budget_bytes"], attempt["reserve"])
    logger.info("answer: HTTP %d in %.2f s, %s, usage %s", result["status"], result["seconds"], result["served_by"], result["usage"])


if __name__ == "__main__":
    main()
