"""Latency of the HTTP path against an in-process call and a bare two-deployment Serve app.

One run, one Ray instance, the same request everywhere:

  (a) in-process: the adapter's ``generate`` called directly in this process;
  (b) bare Serve: a FastAPI ingress that forwards to a replica running the same
      adapter, nothing else (no limits, no media checks, no error mapping);
  (c) video-detective: the real app, access log off (the default);
  (d) video-detective with Ray Serve's per-request access log on.

(b), (c) and (d) are called in interleaved rounds so that drift on a busy
machine hits all of them alike. Target: p50 of (c) within 1.15x of (b).

Replica logs go to files, not to this driver (log_to_driver=False), as under ``serve deploy``.

Usage: .venv/bin/python -m bench.latency [--requests 200] [--max-tokens 8] [--json]
"""

import argparse
import json
import logging
import math
import statistics
import sys
import time

import httpx  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from ray import serve  # noqa: E402

from bench.local_serve import local_serve  # noqa: I001 - sets Ray's environment first
from deployments.app import build_app  # noqa: E402
from deployments.config.app_config import load_app_config  # noqa: E402
from deployments.edge.chat_translation import to_generation_request  # noqa: E402
from deployments.edge.openai_schema import ChatCompletionRequest  # noqa: E402
from models.adapters.hf_adapter import HuggingFaceVisionLanguageAdapter  # noqa: E402
from models.adapters.tiny import ensure_tiny_model  # noqa: E402
from models.requests import ChatMessage, GenerationRequest, TextPart

logger = logging.getLogger("bench.latency")

REPLICA_NUM_CPUS = 1.0
INGRESS_NUM_CPUS = 0.5
bare_app = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": REPLICA_NUM_CPUS}, logging_config={"enable_access_log": False})
class BareReplica:
    def __init__(self, model_path: str) -> None:
        import torch

        torch.set_num_threads(int(REPLICA_NUM_CPUS))
        self._adapter = HuggingFaceVisionLanguageAdapter(model_path)
        self._adapter.load()

    def generate(self, request: GenerationRequest):
        return self._adapter.generate(request)


@serve.deployment(ray_actor_options={"num_cpus": INGRESS_NUM_CPUS}, logging_config={"enable_access_log": False})
@serve.ingress(bare_app)
class BareIngress:
    def __init__(self, replica) -> None:
        self._replica = replica

    @bare_app.post("/v1/chat/completions")
    async def chat(self, request: Request) -> dict:
        body = await request.json()
        text = body["messages"][-1]["content"]
        generation_request = GenerationRequest(
            messages=(ChatMessage(role="user", content=(TextPart(text),)),), max_new_tokens=body["max_tokens"]
        )
        result = await self._replica.generate.remote(generation_request)
        return {"choices": [{"message": {"role": "assistant", "content": result.text}}]}


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def _summary(samples_s: list[float]) -> dict[str, float]:
    return {
        "p50_ms": statistics.median(samples_s) * 1000,
        "p95_ms": _percentile(samples_s, 0.95) * 1000,
        "n": len(samples_s),
    }


def _app_args(access_log: bool) -> dict:
    return {
        "gpu_group": {"enabled": False},
        "cpu_group": {"num_cpus": REPLICA_NUM_CPUS},
        "ingress": {"num_cpus": INGRESS_NUM_CPUS, "access_log": access_log},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per variant")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests per variant first")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    question = "What is happening in this video?"
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": args.max_tokens, "temperature": 0}
    # Logical CPUs for 3 apps x (replica + ingress); requests run one at a time, so the
    # two real cores are never asked for more than one generation at once.
    logical_cpus = math.ceil(3 * (REPLICA_NUM_CPUS + INGRESS_NUM_CPUS)) + 1
    with local_serve(num_cpus=logical_cpus) as (base_url, _):
        model_path = str(ensure_tiny_model())
        # (a) in-process, through the same request translation the ingress uses.
        config = load_app_config(_app_args(access_log=False))
        generation_request = to_generation_request(ChatCompletionRequest.model_validate(body), config)
        adapter = HuggingFaceVisionLanguageAdapter(model_path)
        adapter.load()
        import torch

        torch.set_num_threads(int(REPLICA_NUM_CPUS))
        for _ in range(args.warmup):
            adapter.generate(generation_request)
        in_process = []
        for _ in range(args.requests):
            started = time.perf_counter()
            adapter.generate(generation_request)
            in_process.append(time.perf_counter() - started)
        adapter.unload()

        serve.run(BareIngress.bind(BareReplica.bind(model_path)), name="bare", route_prefix="/bare")
        serve.run(build_app(_app_args(access_log=False)), name="vd", route_prefix="/vd")
        serve.run(build_app(_app_args(access_log=True)), name="vd-access-log", route_prefix="/vd-log")
        variants = {"bare_serve": "/bare", "video_detective": "/vd", "video_detective_access_log": "/vd-log"}
        samples: dict[str, list[float]] = {name: [] for name in variants}
        with httpx.Client(base_url=base_url, timeout=60) as client:
            for prefix in variants.values():
                for _ in range(args.warmup):
                    client.post(f"{prefix}/v1/chat/completions", json=body).raise_for_status()
            for _ in range(args.requests):
                for name, prefix in variants.items():
                    started = time.perf_counter()
                    client.post(f"{prefix}/v1/chat/completions", json=body).raise_for_status()
                    samples[name].append(time.perf_counter() - started)

    figures = {"in_process": _summary(in_process), **{name: _summary(values) for name, values in samples.items()}}
    bare, ours = figures["bare_serve"], figures["video_detective"]
    ratios = {
        "video_detective_vs_bare_serve_p50": ours["p50_ms"] / bare["p50_ms"],
        "video_detective_vs_bare_serve_p95": ours["p95_ms"] / bare["p95_ms"],
        "video_detective_vs_in_process_p50": ours["p50_ms"] / figures["in_process"]["p50_ms"],
        "access_log_on_vs_off_p50": figures["video_detective_access_log"]["p50_ms"] / ours["p50_ms"],
    }
    logger.info("%-28s %9s %9s %6s", "variant", "p50 ms", "p95 ms", "n")
    for name, figure in figures.items():
        logger.info("%-28s %9.2f %9.2f %6d", name, figure["p50_ms"], figure["p95_ms"], figure["n"])
    for name, ratio in ratios.items():
        logger.info("%-38s %.3fx", name, ratio)
    target_met = ratios["video_detective_vs_bare_serve_p50"] <= 1.15
    logger.info("target p50 within 1.15x of bare Serve: %s", "met" if target_met else "NOT met")
    if args.json:
        sys.stdout.write(json.dumps({"figures": figures, "ratios": ratios, "target_met": target_met}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
