"""vLLM through our planner on a real GPU: two replicas on a 0.45 share each of one card, both serving with the
utilization the planner gave them, and the chain's fp8 and 4-bit links. Runs in vLLM's environment (a CUDA build
of vllm, bin/ensure-vllm-venv on the GPU host); skipped without CUDA or without that environment."""

import json
import pathlib
import subprocess

import pytest

from bench.mid_model import ensure_mid_model
from models.engines.vllm import DEFAULT_VLLM_PYTHON

pytestmark = [pytest.mark.gpu, pytest.mark.vllm]
DRILL = pathlib.Path(__file__).with_name("vllm_drill.py")
ROOT = DRILL.parent.parent.parent


@pytest.fixture(scope="module")
def mid_model(tmp_path_factory):
    if not DEFAULT_VLLM_PYTHON.is_file():
        pytest.skip(f"vLLM's environment is not built ({DEFAULT_VLLM_PYTHON}): run bin/ensure-vllm-venv")
    return str(ensure_mid_model(tmp_path_factory.mktemp("mid") / "mid-qwen2-vl"))


def _start(model: str, share: float, *links: str) -> subprocess.Popen:
    return subprocess.Popen([str(DEFAULT_VLLM_PYTHON), str(DRILL), model, str(share), *links], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _reports(process: subprocess.Popen, count: int) -> list[dict]:
    reports = []
    while len(reports) < count:
        line = process.stdout.readline()
        assert line, f"the drill exited with {process.poll()} before its report"
        if line.startswith("{"):
            reports.append(json.loads(line))
    return reports


def test_two_vllm_replicas_on_a_045_share_each_both_serve_within_their_shares(mid_model, record_figure):
    first = _start(mid_model, 0.45, "bf16")
    try:
        (one,) = _reports(first, 1)
        second = _start(mid_model, 0.45, "bf16")
        try:
            (two,) = _reports(second, 1)
        finally:
            second.communicate("", timeout=120)
    finally:
        first.communicate("", timeout=120)

    record_figure("two_vllm_replicas_on_045_shares", [one, two])
    for report in (one, two):
        assert report["error"] is None and report["completion_tokens"] == 16
        assert 0 < report["plan"]["gpu_memory_utilization"] <= 0.45
    assert one["plan"]["gpu_memory_utilization"] + two["plan"]["gpu_memory_utilization"] <= 0.9


def test_the_chains_fp8_and_4_bit_links_load_and_serve(mid_model, record_figure):
    drill = _start(mid_model, 0.45, "fp8", "nf4")
    try:
        reports = _reports(drill, 2)
    finally:
        drill.communicate("", timeout=120)

    record_figure("vllm_fp8_and_nf4_links", reports)
    assert [report["link"] for report in reports] == ["vllm-fp8", "vllm-nf4"]
    assert all(report["error"] is None and report["completion_tokens"] == 16 for report in reports)
