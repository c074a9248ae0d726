"""Structured output's cost and validity: tokens/s with a ``json_schema`` against without, and valid answers out of 50.

One CPU replica of the mid-size Qwen2-VL (bench/mid_model.py, fp32, one thread) in this process, its
real scheduler and sampler. In the same run:

  (a) one request at a time: decode tokens/s (from the first token to the last, so the prompt's
      prefill, the same for both, does not count) of answers constrained to the events schema against
      the same requests unconstrained (``ignore_eos`` so they run to ``max_tokens``), both seeded at
      temperature 1; the ratio is the grammar's cost per token (target at least 0.8x). Whole-request
      tokens/s is printed too: structured answers are shorter, so the prefill weighs more in it;
  (b) 50 constrained requests, 8 at a time: how many answers parse and validate against the schema
      (target 50 of 50), and their mean length.

The mid model reuses the tiny model's tokenizer (384 tokens); a real 151k-token vocabulary makes each
mask larger, which this run does not measure.

Usage: .venv/bin/python -m bench.structured_output [--requests 50] [--max-tokens 64] [--json]
"""

import argparse
import asyncio
import json
import logging
import pathlib
import sys
import time

from bench.mid_model import ensure_mid_model
from deployments.config.app_config import load_app_config
from deployments.plan import resolve_app
from deployments.replica.model_replica import ModelReplica
from deployments.replica.protocol import ReplicaAnswer, StreamOpened
from models.requests import ChatMessage, DecodingOptions, GenerationRequest, ResponseFormat, TextPart

logger = logging.getLogger("bench.structured_output")
EVENTS_SCHEMA = {
    "type": "object",
    "properties": {
        "events": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"t": {"type": "number"}, "what": {"type": "string"}},
                "required": ["t", "what"],
            },
        }
    },
    "required": ["events"],
}
FORMAT = ResponseFormat("json_schema", json.dumps(EVENTS_SCHEMA, sort_keys=True))


def _request(seed: int, max_tokens: int, *, structured: bool) -> GenerationRequest:
    options = DecodingOptions(response_format=FORMAT) if structured else DecodingOptions(ignore_eos=True)
    return GenerationRequest(
        messages=(ChatMessage("user", (TextPart("List what happens in the clip, with times."),)),),
        max_new_tokens=max_tokens,
        temperature=1.0,
        seed=seed,
        options=options,
    )


def _valid(text: str) -> bool:
    try:
        answer = json.loads(text)
    except json.JSONDecodeError:
        return False
    return (
        isinstance(answer, dict)
        and set(answer) == {"events"}
        and isinstance(answer["events"], list)
        and all(
            isinstance(event, dict) and set(event) == {"t", "what"}
            and isinstance(event["t"], (int, float)) and not isinstance(event["t"], bool) and isinstance(event["what"], str)
            for event in answer["events"]
        )
    )


async def _one_at_a_time(replica: ModelReplica, seeds: range, max_tokens: int, *, structured: bool) -> tuple[float, float]:
    """(decode tokens/s from each first token to its last, whole-request tokens/s)."""
    decoded, decode_s, tokens, started = 0, 0.0, 0, time.perf_counter()
    for seed in seeds:
        first_token_at = None
        async for item in replica.generate_stream(_request(seed, max_tokens, structured=structured), stream_text=False):
            if isinstance(item, StreamOpened):
                first_token_at = time.perf_counter()
            elif isinstance(item, ReplicaAnswer):
                decode_s += time.perf_counter() - first_token_at
                decoded += item.result.completion_tokens - 1
                tokens += item.result.completion_tokens
    return decoded / decode_s, tokens / (time.perf_counter() - started)


async def _validity(replica: ModelReplica, count: int, max_tokens: int, concurrency: int) -> tuple[int, float]:
    gate = asyncio.Semaphore(concurrency)

    async def one(seed: int):
        async with gate:
            return (await replica.generate(_request(seed, max_tokens, structured=True))).result

    results = await asyncio.gather(*(one(seed) for seed in range(count)))
    return sum(_valid(result.text) for result in results), sum(r.completion_tokens for r in results) / len(results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--model-dir", type=pathlib.Path, default=pathlib.Path("bench/results/mid-qwen2-vl"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model_path = ensure_mid_model(args.model_dir)
    config = load_app_config({
        "model": {"source": str(model_path.resolve())},
        "gpu_group": {"enabled": False},
        "cpu_group": {"num_cpus": 1, "chain": ["fp32"], "max_batch_size": 8},
        "limits": {"max_tokens": max(512, args.max_tokens)},
    })
    replica = ModelReplica(resolve_app(config), "cpu")
    try:
        deadline = time.monotonic() + 300
        while replica.describe()["state"] != "ready":
            if time.monotonic() > deadline:
                raise RuntimeError(f"The replica did not load: {replica.describe()['reason']}")
            time.sleep(0.5)

        async def run() -> dict:
            await replica.generate(_request(0, 4, structured=True))  # warm-up: compiles the grammar, imports xgrammar
            seeds = range(100, 108)
            plain, plain_whole = await _one_at_a_time(replica, seeds, args.max_tokens, structured=False)
            constrained, constrained_whole = await _one_at_a_time(replica, seeds, args.max_tokens, structured=True)
            valid, mean_tokens = await _validity(replica, args.requests, args.max_tokens, concurrency=8)
            return {"plain_tokens_per_s": plain, "structured_tokens_per_s": constrained, "ratio": constrained / plain,
                    "plain_whole_tokens_per_s": plain_whole, "structured_whole_tokens_per_s": constrained_whole,
                    "valid": valid, "requests": args.requests, "mean_completion_tokens": mean_tokens,
                    "max_tokens": args.max_tokens}

        report = asyncio.run(run())
    finally:
        replica.close()
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    print(f"one at a time, decoding: {report['structured_tokens_per_s']:.1f} tokens/s with the events schema, "
          f"{report['plain_tokens_per_s']:.1f} without: {report['ratio']:.2f}x (target >= 0.8x)")
    print(f"one at a time, whole requests (prefill included; structured answers are shorter): "
          f"{report['structured_whole_tokens_per_s']:.1f} against {report['plain_whole_tokens_per_s']:.1f} tokens/s")
    print(f"{report['valid']} of {report['requests']} answers parse and validate (target all), "
          f"{report['mean_completion_tokens']:.1f} tokens each on average, max_tokens {report['max_tokens']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
