"""Ours on vLLM against bare vLLM, and ours on transformers beside them: same model, same threads, one run.

Up to five servers, one after the other, each alone on the machine, on the mid-size random Qwen2-VL
(:mod:`bench.mid_model`, about 190M parameters) in fp32 with 2 compute threads and prefix caching on:

  bare_vllm                vLLM's own OpenAI server (``python -m vllm.entrypoints.openai.api_server``, vLLM's
                           environment) at its defaults: compiled;
  bare_vllm_eager          the same with ``--enforce-eager``;
  ours_vllm                our app, its CPU group on ``engine: vllm`` (the same vLLM, in the replica, planned by us),
                           with ``max_batch_size`` 16 and ``max_ongoing_requests`` 32 (tuned for 16 clients);
  ours_vllm_defaults       the same at the group's default limits on vLLM (``max_batch_size`` 64,
                           ``max_ongoing_requests`` 128: vLLM's scheduler holds the waiting requests);
  ours_transformers        our app, its CPU group on ``engine: transformers`` (tuned as ours_vllm).

Two kinds of request, closed-loop clients at 1, 8 and 16:
  images         a 224x224 PNG and a short question, 32 new tokens with ``ignore_eos``: a new image on every
                 request, then one image repeated;
  video          two questions on a 10-minute 720p H.264 video, 8 frames: bare vLLM reads the file by its path
                 each time (``--allowed-local-media-path``, ``num_frames`` 8); ours asks by ``file_id`` after one
                 upload (seek-based sampling, then the frame cache).

Prints requests/s and p50 per level, the ratios to bare vLLM (at its defaults and eager), and the second
question's latency ratio; writes docs/engines-throughput.png. Targets: ours on vLLM at least 0.9x bare vLLM's
requests/s at its defaults, at 8 clients with new images and 16 with the repeated one, with p50 within 1.15x.

Usage: .venv/bin/python -m bench.engines [--levels 1,8,16] [--requests-scale 1] [--skip-video] [--skip-images]
       [--servers a,b] [--json]
Needs vLLM's environment (bin/ensure-vllm-venv).
"""

import argparse
import base64
import concurrent.futures
import contextlib
import io
import json
import logging
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Iterator

import httpx
import numpy as np
from PIL import Image

from bench.local_serve import free_port, local_serve  # noqa: I001 - sets Ray's environment first
from bench.mid_model import ensure_mid_model, parameter_count
from bench.plots import engines_chart
from bench.sampling import _video
from deployments.app import build_app
from models.engines.vllm import DEFAULT_VLLM_PYTHON

logger = logging.getLogger("bench.engines")
DOCS_DIR = pathlib.Path(__file__).resolve().parent.parent / "docs"
MAX_TOKENS = 32
MAX_MODEL_LEN = 4096
FRAMES = 8
THREADS = 2
REQUESTS_AT = {1: 8, 8: 48, 16: 64}
OURS_TUNED = {"cpu_group": {"max_batch_size": 16, "max_ongoing_requests": 32}}


def image_data_url(seed: int) -> str:
    """A 224x224 PNG of noise from ``seed``, as a data URL: a new image for each seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _chat(client: httpx.Client, model: str, content: list[dict], max_tokens: int = MAX_TOKENS) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True}
    response = client.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    return response.json()


def _load(
    base_url: str, model: str, clients: int, image_for: Callable[[int], str], *, total: int | None = None,
    max_tokens: int = MAX_TOKENS,
) -> dict[str, float]:
    """Closed loop: ``clients`` threads, each sending its share of the level's requests one after another."""
    total = total or REQUESTS_AT.get(clients, 2 * clients)
    latencies: list[float] = []

    def client_loop(index: int) -> None:
        with httpx.Client(base_url=base_url, timeout=600) as client:
            for number in range(index, total, clients):
                content = [{"type": "image_url", "image_url": {"url": image_for(number)}},
                           {"type": "text", "text": "What is in this picture?"}]
                started = time.perf_counter()
                answer = _chat(client, model, content, max_tokens)
                assert answer["usage"]["completion_tokens"] == max_tokens, answer["usage"]
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client_loop, index) for index in range(clients)]:
            future.result()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"requests": total, "req_per_s": total / wall, "p50_s": statistics.median(ordered),
            "p95_s": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]}


def _video_questions(base_url: str, model: str, video_part: dict) -> dict[str, Any]:
    """Two questions on the video; a server that refuses one is reported with its answer, not measured."""
    times: dict[str, Any] = {}
    with httpx.Client(base_url=base_url, timeout=1800) as client:
        for name, question in (("first_s", "What happens in this video?"), ("second_s", "Who is in this video?")):
            started = time.perf_counter()
            try:
                answer = _chat(client, model, [video_part, {"type": "text", "text": question}], max_tokens=8)
            except httpx.HTTPStatusError as error:
                return {**times, "error": f"{error.response.status_code}: {error.response.text[:300]}"}
            times[name] = time.perf_counter() - started
            times[f"{name.removesuffix('_s')}_prompt_tokens"] = answer["usage"]["prompt_tokens"]
    return times


def measure(base_url: str, model: str, levels: list[int], video_part: dict | None, images: bool = True) -> dict[str, Any]:
    with httpx.Client(base_url=base_url, timeout=600) as client:  # warm-up: the model, the processor, the caches
        for seed in (999_001, 999_002):
            _chat(client, model, [{"type": "image_url", "image_url": {"url": image_data_url(seed)}}, {"type": "text", "text": "Hi"}])
    repeated = image_data_url(0)
    result: dict[str, Any] = {"new_image": {}, "repeated_image": {}}
    for level in levels if images else ():
        result["new_image"][level] = _load(base_url, model, level, lambda number: image_data_url(1000 + level * 100 + number))
        logger.info("  new image, %d clients: %s", level, result["new_image"][level])
    for level in levels if images else ():
        result["repeated_image"][level] = _load(base_url, model, level, lambda number: repeated)
        logger.info("  repeated image, %d clients: %s", level, result["repeated_image"][level])
    if video_part is not None:
        result["video"] = _video_questions(base_url, model, video_part)
        logger.info("  video: %s", result["video"])
    return result


@contextlib.contextmanager
def bare_vllm(
    model_path: pathlib.Path, media_dir: pathlib.Path, *, eager: bool = False, extra_args: tuple[str, ...] = ()
) -> Iterator[tuple[str, int]]:
    """vLLM's own OpenAI server as a user starts it: its defaults (compiled, prefix caching on), or ``--enforce-eager``,
    and ``extra_args``; yields its URL and its process's pid."""
    port = free_port()
    command = [
        str(DEFAULT_VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path),
        "--served-model-name", "mid", "--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN), "--max-num-seqs", "16",
        *(["--enforce-eager"] if eager else []), "--host", "127.0.0.1", "--port", str(port), "--allowed-local-media-path", str(media_dir),
        "--media-io-kwargs", json.dumps({"video": {"num_frames": FRAMES}}), *extra_args,
    ]
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1",
           "VLLM_CPU_OMP_THREADS_BIND": f"0-{THREADS - 1}"}
    log = open(media_dir / "bare-vllm.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"vLLM's server exited with {process.returncode}; see {media_dir / 'bare-vllm.log'}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("vLLM's server was not up within 300 s")
            time.sleep(2)
        yield url, process.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


@contextlib.contextmanager
def ours(
    model_path: pathlib.Path, engine: str, video: pathlib.Path | None, overrides: dict[str, Any] | None = None
) -> Iterator[tuple[str, str, dict | None]]:
    """Our app with its CPU group on ``engine`` (``overrides`` merged into its config); yields its URL, its model's
    id and the video part naming the uploaded file."""
    from ray import serve

    app_args = {
        "model": {"source": str(model_path)},
        "limits": {"max_prompt_tokens": MAX_MODEL_LEN - 96, "max_tokens": 96, "video_frames": FRAMES,
                   "max_upload_bytes": 2 * video.stat().st_size if video else 256 * 2**20},
        "gpu_group": {"enabled": False},
        "cpu_group": {
            "engine": engine, "num_cpus": THREADS, "chain": ["fp32"], "vllm_chain": ["fp32"],
            "memory_bytes": 8 * 2**30, "autoscaling": {"min_replicas": 1, "max_replicas": 1},
            "env_vars": {"VLLM_CPU_OMP_THREADS_BIND": f"0-{THREADS - 1}"},
        },
        "ingress": {"num_cpus": 0},
        "files": {"ttl_s": 0},
    }
    app_args = _merged(app_args, overrides or {})
    with local_serve(num_cpus=THREADS) as (base_url, _):
        serve.run(build_app(app_args), name=f"engines-{engine}", route_prefix="/")
        deadline = time.monotonic() + 600
        while httpx.get(f"{base_url}/readyz", timeout=30).json().get("status") != "ready":
            if time.monotonic() > deadline:
                raise TimeoutError(f"our app on {engine} was not ready within 600 s")
            time.sleep(2)
        part = None
        if video is not None:
            with video.open("rb") as handle:
                upload = httpx.post(f"{base_url}/v1/files", timeout=600, data={"purpose": "vision"},
                                    files={"file": (video.name, handle, "video/mp4")})
            upload.raise_for_status()
            part = {"type": "video_url", "video_url": {"url": upload.json()["id"]}}
        model = httpx.get(f"{base_url}/v1/models", timeout=30).json()["data"][0]["id"]
        yield base_url, model, part


def load_report(path: pathlib.Path) -> dict[str, Any]:
    """A bench's ``--json`` report, saved with whatever log lines came before it."""
    raw = path.read_text()
    return json.loads(raw[raw.index("{"):])


def _ratios(report: dict[str, Any], levels: list[int], ours_name: str, bare_name: str) -> dict[str, Any]:
    bare, on_vllm = report["servers"][bare_name], report["servers"][ours_name]
    ratios: dict[str, Any] = {}
    for kind in ("new_image", "repeated_image"):
        ratios[kind] = {
            level: {"req_per_s": on_vllm[kind][level]["req_per_s"] / bare[kind][level]["req_per_s"],
                    "p50": on_vllm[kind][level]["p50_s"] / bare[kind][level]["p50_s"]}
            for level in levels if level in on_vllm.get(kind, {}) and level in bare.get(kind, {})
        }
    if "second_s" in bare.get("video", {}) and "second_s" in on_vllm.get("video", {}):
        ratios["video_second_question"] = on_vllm["video"]["second_s"] / bare["video"]["second_s"]
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,8,16")
    parser.add_argument("--model-dir", type=pathlib.Path, default=pathlib.Path("bench/results/mid-qwen2-vl"))
    parser.add_argument("--skip-video", action="store_true")
    parser.add_argument("--skip-images", action="store_true")
    parser.add_argument("--servers", default="bare_vllm,bare_vllm_eager,ours_vllm,ours_vllm_defaults,ours_transformers",
                        help="which of the five to run")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot-dir", type=pathlib.Path, default=DOCS_DIR)
    parser.add_argument("--chart-from", type=pathlib.Path, help="draw the chart from a saved --json report, measuring nothing")
    args = parser.parse_args()
    if args.chart_from:
        saved = load_report(args.chart_from)
        servers = {name: {kind: {int(level): row for level, row in server.get(kind, {}).items()}  # JSON keys are strings
                          for kind in ("new_image", "repeated_image")} for name, server in saved["servers"].items()}
        engines_chart(saved["levels"], servers, args.plot_dir / "engines-throughput.png")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not DEFAULT_VLLM_PYTHON.is_file():
        print(f"vLLM's environment is not built ({DEFAULT_VLLM_PYTHON}): run bin/ensure-vllm-venv", file=sys.stderr)
        return 2
    levels = [int(level) for level in args.levels.split(",")]
    model_path = ensure_mid_model(args.model_dir).resolve()
    video = None if args.skip_video else _video(600)
    report: dict[str, Any] = {"model_parameters": parameter_count(model_path), "levels": levels, "servers": {}}
    servers, images = args.servers.split(","), not args.skip_images
    for name, eager in (("bare_vllm", False), ("bare_vllm_eager", True)):
        if name in servers:
            logger.info("bare vLLM%s", ", eager" if eager else "")
            with bare_vllm(model_path, video.parent if video else model_path, eager=eager) as (url, _):
                part = {"type": "video_url", "video_url": {"url": video.resolve().as_uri()}} if video else None
                report["servers"][name] = measure(url, "mid", levels, part, images)
    for engine, name, overrides in (("vllm", "ours_vllm", OURS_TUNED), ("vllm", "ours_vllm_defaults", {}),
                                    ("transformers", "ours_transformers", OURS_TUNED)):
        if name in servers:
            logger.info("%s", name)
            with ours(model_path, engine, video, overrides) as (url, model, part):
                report["servers"][name] = measure(url, model, levels, part, images)
    report["ratios"] = {
        f"{ours_name} / {bare_name}": _ratios(report, levels if images else [], ours_name, bare_name)
        for ours_name in ("ours_vllm", "ours_vllm_defaults") for bare_name in ("bare_vllm", "bare_vllm_eager")
        if {ours_name, bare_name} <= set(report["servers"])
    }
    if images and len(report["servers"]) >= 2:
        engines_chart(levels, report["servers"], args.plot_dir / "engines-throughput.png")
    if not args.json:
        _print(report, levels if images else [])
        return 0
    json.dump(report, sys.stdout, indent=2, default=str)
    print()
    return 0


def _print(report: dict[str, Any], levels: list[int]) -> None:
    servers = report["servers"]
    print(f"mid-size Qwen2-VL, {report['model_parameters'] / 1e6:.0f}M parameters, fp32, {THREADS} threads, "
          f"{MAX_TOKENS} tokens with ignore_eos")
    names = [name for name in ("bare_vllm", "bare_vllm_eager", "ours_vllm", "ours_vllm_defaults", "ours_transformers")
             if name in servers]
    for kind in ("new_image", "repeated_image") if levels else ():
        print(f"{kind.replace('_', ' ')}: clients | " + " | ".join(f"{name} req/s p50" for name in names))
        for level in levels:
            cells = []
            for name in names:
                row = servers[name].get(kind, {}).get(level)
                cells.append(f"{row['req_per_s']:.2f} {row['p50_s']:.2f} s" if row else "-")
            print(f"  {level:2d} | " + " | ".join(cells))
        for pair, ratios in report.get("ratios", {}).items():
            figures = ", ".join(f"{level}: {ratio['req_per_s']:.2f}x req/s, {ratio['p50']:.2f}x p50"
                                for level, ratio in ratios.get(kind, {}).items())
            print(f"  {pair}: {figures}")
    for name, server in servers.items():
        if "video" in server:
            print(f"  video, {name}: {server['video']}")
    for pair, ratios in report.get("ratios", {}).items():
        if "video_second_question" in ratios:
            print(f"  second question, {pair}: {ratios['video_second_question']:.3f}x")


if __name__ == "__main__":
    sys.exit(main())
