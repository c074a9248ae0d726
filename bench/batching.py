"""Throughput under concurrency, against plain transformers batched ``generate`` in the same run.

On the mid-size random Qwen2-VL (:mod:`bench.mid_model`, about 190M parameters), all at one thread:

  (a) in-process baseline: ``model.generate`` on a left-padded batch of 1, 4, 8 and 16 prompts,
      tokens/s at each batch size, and its speed-up over batch 1;
  (b) the server: 1, 4, 8 and 16 concurrent HTTP clients against the CPU group (one replica, one
      thread, continuous batching), requests/s, tokens/s, p50 and p95 latency, and the speed-up
      in tokens/s over one client;
  (c) head-of-line: a short request sent while a long one runs, as a ratio to the short one alone.

Target: 8 clients reach at least 0.85x of the in-process batch-8 speed-up; head-of-line at most 2x.

Usage: .venv/bin/python -m bench.batching [--max-tokens 32] [--rounds 2] [--json]
"""

import argparse
import concurrent.futures
import json
import logging
import pathlib
import statistics
import sys
import time

import httpx  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from bench.local_serve import local_serve  # noqa: I001 - sets Ray's environment first
from bench.mid_model import ensure_mid_model, parameter_count  # noqa: E402
from bench.plots import DOCS_DIR, throughput_chart  # noqa: E402
from deployments.app import build_app  # noqa: E402

logger = logging.getLogger("bench.batching")
LEVELS = (1, 4, 8, 16)
PROMPT = "Describe what happens in this clip, frame by frame, in plain words."


def in_process(model_path: pathlib.Path, max_tokens: int) -> dict[int, float]:
    """tokens/s of plain batched ``generate`` at each batch size (1 thread, greedy, no EOS stop)."""
    torch.set_num_threads(1)
    processor = transformers.AutoProcessor.from_pretrained(model_path)
    processor.tokenizer.padding_side = "left"
    model = transformers.AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32).eval()
    chat = [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]
    prompt = processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    speeds = {}
    for batch in LEVELS:
        inputs = processor(text=[prompt] * batch, return_tensors="pt", padding=True)
        kwargs = dict(max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False, temperature=None,
                      top_p=None, top_k=None)
        with torch.inference_mode():
            model.generate(**inputs, **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
            started = time.perf_counter()
            output = model.generate(**inputs, **kwargs)
            elapsed = time.perf_counter() - started
        generated = (output.shape[1] - inputs["input_ids"].shape[1]) * batch
        speeds[batch] = generated / elapsed
        logger.info("in-process batch %d: %.1f tokens/s", batch, speeds[batch])
    del model
    return speeds


def _request(max_tokens: int, text: str = PROMPT) -> dict:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}


def _post(client: httpx.Client, body: dict) -> tuple[float, int]:
    started = time.perf_counter()
    response = client.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    return time.perf_counter() - started, response.json()["usage"]["completion_tokens"]


def served(base_url: str, max_tokens: int, rounds: int) -> dict[int, dict[str, float]]:
    results = {}
    with httpx.Client(base_url=base_url, timeout=600) as client:
        _post(client, _request(4))  # warm-up
    for clients in LEVELS:
        def one_client(index: int) -> list[tuple[float, int]]:
            with httpx.Client(base_url=base_url, timeout=600) as client:
                return [_post(client, _request(max_tokens, f"{PROMPT} ({index}, {round_})")) for round_ in range(rounds)]

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
            done = [item for items in pool.map(one_client, range(clients)) for item in items]
        elapsed = time.perf_counter() - started
        latencies = sorted(latency for latency, _ in done)
        results[clients] = {
            "requests_per_s": len(done) / elapsed,
            "tokens_per_s": sum(tokens for _, tokens in done) / elapsed,
            "p50_s": statistics.median(latencies),
            "p95_s": latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))],
        }
        logger.info("server %d clients: %s", clients, results[clients])
    return results


def head_of_line(base_url: str, long_tokens: int, short_tokens: int) -> dict[str, float]:
    with httpx.Client(base_url=base_url, timeout=600) as client:
        alone = statistics.median(_post(client, _request(short_tokens, "short"))[0] for _ in range(3))
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            long = pool.submit(_post, client, _request(long_tokens, "long"))
            time.sleep(1.0)  # the long one is decoding
            during = _post(client, _request(short_tokens, "short"))[0]
            long_s = long.result()[0]
    return {"short_alone_s": alone, "short_during_long_s": during, "ratio": during / alone, "long_s": long_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="requests per client at each level")
    parser.add_argument("--model-dir", type=pathlib.Path, default=pathlib.Path("bench/results/mid-qwen2-vl"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot-dir", type=pathlib.Path, default=DOCS_DIR, help="where the PNG chart goes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model_path = ensure_mid_model(args.model_dir)
    baseline = in_process(model_path, args.max_tokens)
    app_args = {
        "model": {"source": str(model_path.resolve())},
        "limits": {"max_tokens": 512},
        "gpu_group": {"enabled": False},
        "cpu_group": {
            "num_cpus": 1,
            "chain": ["fp32"],
            "max_batch_size": 16,
            "max_ongoing_requests": 32,
            "autoscaling": {"min_replicas": 1, "max_replicas": 1},
        },
        "ingress": {"num_cpus": 0.5},
    }
    with local_serve(num_cpus=2) as (base_url, _):
        from ray import serve

        serve.run(build_app(app_args), name="batching", route_prefix="/")
        server = served(base_url, args.max_tokens, args.rounds)
        blocking = head_of_line(base_url, long_tokens=400, short_tokens=4)
    in_speedup = baseline[8] / baseline[1]
    server_speedup = server[8]["tokens_per_s"] / server[1]["tokens_per_s"]
    report = {
        "model_parameters": parameter_count(model_path),
        "max_tokens": args.max_tokens,
        "in_process_tokens_per_s": baseline,
        "server": server,
        "in_process_speedup_at_8": in_speedup,
        "server_speedup_at_8": server_speedup,
        "ratio_of_speedups_at_8": server_speedup / in_speedup,
        "head_of_line": blocking,
    }
    throughput_chart(LEVELS, baseline, server, f"{report['model_parameters'] / 1e6:.0f}M-parameter Qwen2-VL",
                     args.plot_dir / "throughput-vs-concurrency.png")
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    print(f"mid-size Qwen2-VL, {report['model_parameters'] / 1e6:.0f}M parameters, {args.max_tokens} new tokens, 1 thread")
    print("level | in-process tok/s | server req/s | server tok/s | p50 s | p95 s")
    for level in LEVELS:
        row = server[level]
        print(f"{level:5d} | {baseline[level]:16.1f} | {row['requests_per_s']:12.2f} | {row['tokens_per_s']:12.1f} | "
              f"{row['p50_s']:5.2f} | {row['p95_s']:5.2f}")
    print(f"speed-up at 8: in-process {in_speedup:.2f}x, server {server_speedup:.2f}x -> "
          f"{server_speedup / in_speedup:.2f}x of in-process (target >= 0.85)")
    print(f"head-of-line: a 4-token request alone {blocking['short_alone_s']:.2f} s, during a 400-token one "
          f"{blocking['short_during_long_s']:.2f} s -> {blocking['ratio']:.2f}x (target <= 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
