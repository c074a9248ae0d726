"""tests/gpu/run_all.sh, the one script a GPU host runs: the vLLM share test first, every part under a limit that
fits 10 minutes, and its figures in one file. Here (no CUDA) it must stop at once and say why."""

import pathlib
import re
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.unit

SCRIPT = pathlib.Path(__file__).parent / "gpu" / "run_all.sh"


def test_the_vllm_share_test_runs_first_and_the_parts_fit_ten_minutes():
    parts = re.findall(r'^part "([^"]+)" (\d+) (.+)$', SCRIPT.read_text(), re.M)

    assert parts[0][2] == "tests/gpu/test_vllm_shares.py"
    assert "--ignore=tests/gpu/test_vllm_shares.py" in parts[1][2]
    assert sum(int(limit) for _, limit, _ in parts) + 10 * len(parts) <= 600


def test_without_a_cuda_device_it_says_so_in_the_figures_file_and_exits_2(tmp_path):
    if shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi"], capture_output=True).returncode == 0:
        pytest.skip("this host has a CUDA device: the script would run the GPU checks")
    figures = tmp_path / "figures.jsonl"

    done = subprocess.run(["bash", str(SCRIPT), str(figures)], capture_output=True, text=True, timeout=60)

    assert done.returncode == 2
    assert "no CUDA device" in done.stderr
    assert figures.read_text().splitlines() == ['{"device": "no CUDA device found"}']
