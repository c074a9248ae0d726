"""An outside client's view: GuideLLM (the benchmark client vLLM's docs recommend) against this server.

GuideLLM installs into its own virtual environment, ``bench/results/guidellm-venv``, never the
project's: this script creates it on first use (``guidellm[vision]``, pinned below; it reuses the
project's torch and transformers through a ``.pth`` file, so only GuideLLM's own dependencies are
fetched). Then, against one local Ray instance serving the default app on the built-in tiny model (CPU
group; this machine has no GPU), it runs GuideLLM with its defaults (its ``/health`` probe, streaming,
``stream_options.continuous_usage_stats``, ``ignore_eos``) on three synthetic data sets, at 1 and 4
concurrent streams, and prints each run's requests, errors, requests/s, output tokens/s and latency.

Usage: .venv/bin/python -m bench.guidellm [--requests 40] [--json]
"""

import argparse
import json
import logging
import os
import pathlib
import subprocess
import sys
import sysconfig

from ray import serve  # noqa: E402

from bench.local_serve import local_serve  # noqa: I001 - sets Ray's environment first
from deployments.app import build_app  # noqa: E402
from models.adapters.tiny import ensure_tiny_model  # noqa: E402

logger = logging.getLogger("bench.guidellm")
GUIDELLM = "guidellm[vision]==0.8.1"
VENV = pathlib.Path("bench/results/guidellm-venv")
TEXT = "kind=synthetic_text,prompt_tokens=64,output_tokens=16"
RUNS = {
    "text": [TEXT],
    "image": [TEXT, "kind=synthetic_image,width=448,height=448"],
    "video": [TEXT, "kind=synthetic_video,width=320,height=240,frames=16,fps=4"],
}
STREAMS = (1, 4)


def ensure_guidellm() -> pathlib.Path:
    executable = VENV / "bin" / "guidellm"
    if executable.exists():
        return executable
    logger.info("Creating %s with %s (once; a few minutes)", VENV, GUIDELLM)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    venv_python = VENV / "bin" / "python"
    venv_site = subprocess.run(
        [str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    # The project's site-packages after GuideLLM's own: torch and transformers are not downloaded again.
    pathlib.Path(venv_site, "project-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(venv_python), "-m", "pip", "install", "--quiet", GUIDELLM], check=True)
    return executable


def run_guidellm(executable: pathlib.Path, target: str, data: list[str], streams: int, requests: int,
                 output: pathlib.Path) -> dict:
    command = [
        str(executable), "run",
        "--backend", f"kind=openai_http,target={target},model=tiny-qwen2-vl",
        "--profile", f"kind=concurrent,streams={streams}",
        "--tokenizer", f"kind=huggingface_auto,model={ensure_tiny_model()}",
        "--constraint", f"kind=max_requests,count={requests}",
        "--output", f"kind=json,path={output}",
        "--disable-console-interactive",
    ]
    for item in data:
        command += ["--data", item]
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    metrics = json.loads(output.read_text())["benchmarks"][0]["metrics"]
    latency = metrics["request_latency"]["successful"]
    return {
        "successful": metrics["request_totals"]["successful"],
        "errored": metrics["request_totals"]["errored"],
        "incomplete": metrics["request_totals"]["incomplete"],
        "requests_per_s": metrics["requests_per_second"]["successful"]["mean"],
        "output_tokens_per_s": metrics["text"]["tokens"]["output_per_second"]["successful"]["mean"],
        "latency_p50_s": latency["median"],
        "latency_p95_s": latency["percentiles"]["p95"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    executable = ensure_guidellm()
    report = {}
    with local_serve(num_cpus=2) as (base_url, workdir):
        serve.run(build_app({"gpu_group": {"enabled": False}}), name="guidellm", route_prefix="/")
        for name, data in RUNS.items():
            for streams in STREAMS:
                key = f"{name}@{streams}"
                report[key] = run_guidellm(executable, base_url, data, streams, args.requests, workdir / f"{key}.json")
                logger.info("%s: %s", key, report[key])
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    print("| run | requests | errors | requests/s | output tokens/s | latency p50 | latency p95 |")
    print("|---|---|---|---|---|---|---|")
    for key, row in report.items():
        print(f"| {key} | {row['successful']} of {row['successful'] + row['errored'] + row['incomplete']} | "
              f"{row['errored']} | {row['requests_per_s']:.2f} | {row['output_tokens_per_s']:.1f} | "
              f"{row['latency_p50_s']:.3f} s | {row['latency_p95_s']:.3f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
