"""Ask a video many questions: from the second on, what does a question cost, on each engine, beside bare vLLM, and
with two replicas (media affinity on and off)?

On the mid-size random Qwen2-VL with a real vision tower's widths (:mod:`bench.mid_model`, ``real_vision``: Qwen2-VL-
2B's text and vision widths, 4 decoder and 4 vision blocks), fp32, 2 threads. Each part alone on the machine:

  nth       ours, one CPU replica: five questions (8 tokens, temperature 0) about the 10-minute 720p H.264 video, 8
            frames at the default 448x448 budget, asked by file id after one upload; each question's wall time, its
            prompt tokens and the replica's media cache. On transformers, on transformers with ``media_cache_bytes: 0``
            (what the media cache is worth beside the frame cache) and on vLLM. One question about another video
            first: every one-time cost is paid before the measured first question.
  bare      bare vLLM (its own server at its defaults), ``--media-io-kwargs`` 8 frames and ``--mm-processor-kwargs``
            ``max_pixels`` at our budget: the file by path (vLLM 0.32's CPU build takes 172 full-size frames and
            refuses the prompt past its context), then our 8 frames as a JPEG frame list: its first and second
            question, and their prompt tokens beside ours (they must be equal).
  affinity  two CPU replicas (1 thread each) on transformers: 10 files, 5 questions each (50 requests), in one random
            order by 8 clients, 4 frames at a 224x224 budget; one replica alone, then two with media affinity on
            (its default load bound of 2, then 4), then two with it off. Requests per second, the replicas' media-cache hit rate, each replica's share.
  memory    one CPU replica with a 24 MiB media cache: 40 new 448x448 images from 4 clients, then 40 more: refused
            requests (0 expected), entries evicted and given back, peak RSS beside the replica's budget.

Targets (issue 30): the second to fifth question at most 0.2x the first on transformers, 0.15x on vLLM; ours at most
0.5x bare vLLM's second question; with affinity the hit rate at least 0.9x one replica's, requests/s at least 1.3x
affinity off, no replica above 1.5x the average share; under the burst 0 refused, peak RSS within the budget.

Usage: .venv/bin/python -m bench.ask_many [--parts nth,bare,affinity,memory] [--json]
Needs vLLM's environment (bin/ensure-vllm-venv) for the vLLM and bare parts.
"""

import argparse
import base64
import collections
import concurrent.futures
import io
import json
import logging
import pathlib
import queue
import random
import statistics
import sys
import threading
import time
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.engines import FRAMES, _chat, bare_vllm, ours  # noqa: I001 - sets Ray's environment first
from bench.mid_model import ensure_mid_model, parameter_count
from bench.plots import ask_many_chart
from bench.sampling import _video
from models.engines.vllm import DEFAULT_VLLM_PYTHON
from models.media.video import FrameSelection, VideoLimits, sample_video

logger = logging.getLogger("bench.ask_many")
DOCS_DIR = pathlib.Path(__file__).resolve().parent.parent / "docs"
QUESTIONS = ("What happens in this video?", "Who is in this video?", "Where does it take place?",
             "What colour dominates?", "Does the camera move?")
PIXEL_BUDGET = 448 * 448  # limits.max_pixels_per_frame's default
AFFINITY_FILES, AFFINITY_QUESTIONS, AFFINITY_CLIENTS = 10, 5, 8
AFFINITY_LIMITS = {"limits": {"video_frames": 4, "max_pixels_per_frame": 224 * 224}}


def _cpu_replicas(url: str) -> list[dict[str, Any]]:
    return httpx.get(f"{url}/v1/memory", timeout=60).json()["groups"]["cpu"]


def _media_caches(url: str) -> dict[str, dict[str, Any]]:
    return {replica["replica"]: (replica.get("batching") or {}).get("media_cache") or {} for replica in _cpu_replicas(url)}


def _upload(url: str, path: pathlib.Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        response = httpx.post(f"{url}/v1/files", timeout=600, data={"purpose": "vision"},
                              files={"file": (path.name, handle, "video/mp4")})
    response.raise_for_status()
    return {"type": "video_url", "video_url": {"url": response.json()["id"]}}


def _questions(url: str, model: str, part: dict) -> dict[str, Any]:
    seconds, tokens = [], []
    with httpx.Client(base_url=url, timeout=1800) as client:
        for question in QUESTIONS:
            started = time.perf_counter()
            answer = _chat(client, model, [part, {"type": "text", "text": question}], max_tokens=8)
            seconds.append(time.perf_counter() - started)
            tokens.append(answer["usage"]["prompt_tokens"])
    return {"seconds": seconds, "prompt_tokens": tokens, "later_over_first": [value / seconds[0] for value in seconds[1:]]}


def nth(model_path: pathlib.Path, video: pathlib.Path, warm_video: pathlib.Path, engine: str, overrides: dict) -> dict:
    with ours(model_path, engine, video, overrides) as (url, model, part):
        warm = _upload(url, warm_video)
        _questions_once(url, model, warm)
        result = _questions(url, model, part)
        result["media_cache"] = next(iter(_media_caches(url).values()))
        for uploaded in (warm, part):
            httpx.delete(f"{url}/v1/files/{uploaded['video_url']['url']}", timeout=60)
    logger.info("  %s %s: %s", engine, overrides or "", result)
    return result


def _questions_once(url: str, model: str, part: dict) -> None:
    with httpx.Client(base_url=url, timeout=1800) as client:
        _chat(client, model, [part, {"type": "text", "text": "Warm up."}], max_tokens=8)


def bare(model_path: pathlib.Path, video: pathlib.Path) -> dict[str, Any]:
    """Bare vLLM's first and second question: the file by path as the issue asks, and, where vLLM takes that past its
    context (its video loader and processor here ignore ``num_frames`` and ``max_pixels``: 172 full-size frames,
    96820 tokens), our 8 sampled frames as a JPEG frame list (``data:video/jpeg``), the same frames and tokens."""
    extra = ("--mm-processor-kwargs", json.dumps({"max_pixels": PIXEL_BUDGET}))
    with bare_vllm(model_path, video.parent, extra_args=extra) as (url, _):
        result: dict[str, Any] = {}
        by_path = {"type": "video_url", "video_url": {"url": video.resolve().as_uri()}}
        as_frames = {"type": "video_url", "video_url": {"url": _jpeg_frames(video, FRAMES)}}
        with httpx.Client(base_url=url, timeout=1800) as client:
            try:
                _chat(client, "mid", [by_path, {"type": "text", "text": QUESTIONS[0]}], max_tokens=8)
                result["by_path"] = "answered"
            except httpx.HTTPStatusError as error:
                result["by_path"] = f"{error.response.status_code}: {error.response.text[:200]}"
            _chat(client, "mid", [{"type": "video_url", "video_url": {"url": _jpeg_frames(_video(20), FRAMES)}},
                                  {"type": "text", "text": "Warm up."}], max_tokens=8)
            for name, question in (("first", QUESTIONS[0]), ("second", QUESTIONS[1])):
                started = time.perf_counter()
                answer = _chat(client, "mid", [as_frames, {"type": "text", "text": question}], max_tokens=8)
                result[f"{name}_s"] = time.perf_counter() - started
                result[f"{name}_prompt_tokens"] = answer["usage"]["prompt_tokens"]
    logger.info("  bare vLLM: %s", result)
    return result


def _jpeg_frames(video: pathlib.Path, count: int) -> str:
    """``count`` frames sampled and resized as our server does (seek-based, to the 448x448 budget), as vLLM's
    ``data:video/jpeg`` frame list."""
    limits = VideoLimits(max_duration_s=3600, max_source_pixels=1920 * 1080, max_frames=count,
                         target_pixels_per_frame=PIXEL_BUDGET)
    sampled = sample_video(video, FrameSelection(num_frames=count), limits)
    frames = []
    for pixels in sampled.frames:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
        frames.append(base64.b64encode(buffer.getvalue()).decode())
    return "data:video/jpeg;base64," + ",".join(frames)


def affinity(
    model_path: pathlib.Path, files: list[pathlib.Path], *, replicas: int, enabled: bool, max_load_gap: int = 2
) -> dict[str, Any]:
    overrides = {**AFFINITY_LIMITS, "cpu_group": {"num_cpus": 2 // replicas, "autoscaling": {"min_replicas": replicas, "max_replicas": replicas}},
                 "routing": {"media_affinity": enabled, "media_affinity_max_load_gap": max_load_gap}}
    with ours(model_path, "transformers", None, overrides) as (url, model, _):
        while sum(replica["state"] == "ready" for replica in _cpu_replicas(url)) < replicas:
            time.sleep(1)
        parts = [_upload(url, path) for path in files]
        plan = [(index, question) for index in range(len(parts)) for question in range(AFFINITY_QUESTIONS)]
        random.Random(0).shuffle(plan)
        work: queue.Queue = queue.Queue()
        for item in plan:
            work.put(item)
        served = collections.Counter()
        latencies: list[float] = []
        lock = threading.Lock()

        def client_loop() -> None:
            with httpx.Client(base_url=url, timeout=1800) as client:
                while True:
                    try:
                        index, question = work.get_nowait()
                    except queue.Empty:
                        return
                    body = {"model": model, "temperature": 0, "max_tokens": 8, "ignore_eos": True, "messages": [
                        {"role": "user", "content": [parts[index], {"type": "text", "text": QUESTIONS[question]}]}]}
                    started = time.perf_counter()
                    response = client.post("/v1/chat/completions", json=body)
                    response.raise_for_status()
                    with lock:
                        latencies.append(time.perf_counter() - started)
                        served[response.headers["x-served-by-replica"]] += 1

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(AFFINITY_CLIENTS) as pool:
            for future in [pool.submit(client_loop) for _ in range(AFFINITY_CLIENTS)]:
                future.result()
        wall = time.perf_counter() - started
        caches = _media_caches(url)
        for part in parts:  # the default store is every default-config server's on this machine: leave it as found
            httpx.delete(f"{url}/v1/files/{part['video_url']['url']}", timeout=60)
    hits, misses = sum(cache["hits"] for cache in caches.values()), sum(cache["misses"] for cache in caches.values())
    result = {
        "replicas": replicas, "affinity": enabled, "max_load_gap": max_load_gap, "requests": len(plan), "req_per_s": len(plan) / wall,
        "p50_s": statistics.median(latencies), "hit_ratio": hits / (hits + misses), "hits": hits, "misses": misses,
        "served": dict(served), "max_share_over_average": max(served.values()) / (len(plan) / replicas),
    }
    logger.info("  affinity %s, %d replicas: %s", "on" if enabled else "off", replicas, result)
    return result


def _image_url(seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (448, 448, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def memory(model_path: pathlib.Path) -> dict[str, Any]:
    overrides = {"cpu_group": {"media_cache_bytes": 24 * 2**20}}
    with ours(model_path, "transformers", None, overrides) as (url, model, _):
        peak = {"rss": 0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                (replica,) = _cpu_replicas(url)
                peak["rss"] = max(peak["rss"], replica["memory"]["process_rss_bytes"])
                peak["budget"] = replica["budget"]["limit_bytes"]
                stop.wait(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        statuses = collections.Counter()

        def ask(seed: int) -> None:
            body = {"model": model, "temperature": 0, "max_tokens": 4, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": _image_url(seed)}}, {"type": "text", "text": "What is it?"}]}]}
            statuses[httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600).status_code] += 1

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(ask, range(80)))
        stop.set()
        sampler.join()
        (cache,) = _media_caches(url).values()
    result = {"statuses": dict(statuses), "refused": sum(count for status, count in statuses.items() if status != 200),
              "media_cache": cache, "peak_rss_bytes": peak["rss"], "budget_bytes": peak.get("budget")}
    logger.info("  memory: %s", result)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="nth,bare,affinity,memory")
    parser.add_argument("--model-dir", type=pathlib.Path, default=pathlib.Path("bench/results/mid-qwen2-vl-vision"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot-dir", type=pathlib.Path, default=DOCS_DIR)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parts = args.parts.split(",")
    model_path = ensure_mid_model(args.model_dir, real_vision=True).resolve()
    video, warm_video = _video(600), _video(20)
    report: dict[str, Any] = {"model_parameters": parameter_count(model_path)}
    vllm_built = DEFAULT_VLLM_PYTHON.is_file()
    if "nth" in parts:
        report["nth"] = {"transformers": nth(model_path, video, warm_video, "transformers", {}),
                         "transformers_no_media_cache": nth(model_path, video, warm_video, "transformers",
                                                            {"cpu_group": {"media_cache_bytes": 0}})}
        if vllm_built:
            report["nth"]["vllm"] = nth(model_path, video, warm_video, "vllm", {})
    if "bare" in parts and vllm_built:
        report["bare_vllm"] = bare(model_path, video)
        if "vllm" in report.get("nth", {}):
            report["bare_vllm"]["ours_second_over_bare_second"] = report["nth"]["vllm"]["seconds"][1] / report["bare_vllm"]["second_s"]
    if "affinity" in parts:
        files = [_video(10 * (index + 1)) for index in range(AFFINITY_FILES)]  # 10 different files, 10 s to 100 s
        report["affinity"] = [affinity(model_path, files, replicas=replicas, enabled=enabled, max_load_gap=gap)
                              for replicas, enabled, gap in ((1, True, 2), (2, True, 2), (2, True, 4), (2, False, 2))]
        single, on, on_looser, off = report["affinity"]
        report["affinity_ratios"] = {
            f"gap {result['max_load_gap']}": {"hit_ratio_on_over_single": result["hit_ratio"] / single["hit_ratio"],
                                             "req_per_s_on_over_off": result["req_per_s"] / off["req_per_s"]}
            for result in (on, on_looser)
        }
    if "memory" in parts:
        report["memory"] = memory(model_path)
    if "nth" in report:
        ask_many_chart(report["nth"], args.plot_dir / "ask-many.png")
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        print()
    else:
        _print(report)
    return 0


def _print(report: dict[str, Any]) -> None:
    print(f"mid-size Qwen2-VL with a real vision tower's widths, {report['model_parameters'] / 1e6:.0f}M parameters, fp32")
    for name, result in report.get("nth", {}).items():
        seconds = ", ".join(f"{value:.2f}" for value in result["seconds"])
        ratios = ", ".join(f"{value:.3f}x" for value in result["later_over_first"])
        print(f"  {name}: questions 1-5 {seconds} s; 2-5 over the first: {ratios}; prompt tokens {result['prompt_tokens'][0]}")
    if "bare_vllm" in report:
        print(f"  bare vLLM: {report['bare_vllm']}")
    for result in report.get("affinity", []):
        print(f"  {result['replicas']} replicas, affinity {'on' if result['affinity'] else 'off'} (gap {result['max_load_gap']}): {result['req_per_s']:.3f} "
              f"req/s, hit ratio {result['hit_ratio']:.2f}, served {result['served']}, max share {result['max_share_over_average']:.2f}x")
    if "affinity_ratios" in report:
        print(f"  affinity: {report['affinity_ratios']}")
    if "memory" in report:
        print(f"  memory: {report['memory']}")


if __name__ == "__main__":
    sys.exit(main())
