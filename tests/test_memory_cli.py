import json
import subprocess
import sys

import pytest

from memory.__main__ import main
from models.adapters.reference_configs import write_config_only

pytestmark = pytest.mark.unit

GIB = 1024**3


@pytest.fixture
def run(capsys):
    """``python -m memory ARGS`` in this process (torch is already imported here)."""

    def run_cli(*args: str) -> subprocess.CompletedProcess:
        returncode = main(list(args))
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, returncode, captured.out, captured.err)

    return run_cli


def test_python_dash_m_memory_summary_json_is_measured_and_says_there_is_no_gpu():
    completed = subprocess.run(
        [sys.executable, "-m", "memory", "summary", "--json"], capture_output=True, text=True, timeout=300
    )

    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert report["memory"]["process_rss_bytes"] > 0
    assert report["memory"]["system_total_bytes"] >= report["memory"]["system_available_bytes"] > 0
    assert report["memory"]["gpus"] == []
    assert "requested" in report["allocator"] and "effective" in report["allocator"]


def test_summary_reads_for_people(run):
    completed = run("summary")

    assert completed.returncode == 0
    assert "GPUs               none visible to this process" in completed.stdout


@pytest.fixture(scope="module")
def qwen2_vl_7b_config(tmp_path_factory):
    return write_config_only("qwen2-vl-7b", tmp_path_factory.mktemp("qwen2-vl-7b"))


def test_plan_for_a_7b_model_on_half_of_an_80_gib_gpu(qwen2_vl_7b_config, run):
    completed = run("plan", str(qwen2_vl_7b_config), "--gpu-share", "0.5", "--gpu-total-bytes", str(80 * GIB), "--json")

    assert completed.returncode == 0, completed.stderr
    plan = json.loads(completed.stdout)
    assert [row["strategy"] for row in plan["strategies"]] == ["bf16", "int8", "nf4"]
    bf16 = plan["strategies"][0]
    # 8.29B parameters x 2 bytes, plus fp32 rotary buffers.
    assert bf16["estimate_bytes"] == pytest.approx(8_291_375_616 * 2, rel=0.001)
    assert bf16["fits"] is True
    assert plan["would_load"] == "bf16"
    assert plan["budget"]["limit_bytes"] == 40 * GIB


def test_plan_when_another_process_holds_the_gpu_falls_to_a_quantized_strategy(qwen2_vl_7b_config, run):
    completed = run(
        "plan", str(qwen2_vl_7b_config), "--gpu-total-bytes", str(80 * GIB), "--gpu-free-bytes", str(12 * GIB), "--json"
    )

    plan = json.loads(completed.stdout)
    assert [row["fits"] for row in plan["strategies"]] == [False, True, True]
    assert plan["would_load"] == "int8"


def test_plan_exits_1_when_nothing_fits(qwen2_vl_7b_config, run):
    completed = run("plan", str(qwen2_vl_7b_config), "--device", "cpu", "--memory-bytes", str(2 * GIB))

    assert completed.returncode == 1
    assert "would load as: nothing fits" in completed.stdout
    assert "does not fit (short by" in completed.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["plan", "/no/such/model"], "does not exist"),
        (["plan", "{config}", "--device", "cuda"], "No GPU visible to plan against"),
        (["plan", "{config}", "--device", "cpu", "--memory-bytes", "0"], "must be above zero"),
        (["plan", "{config}", "--chain", "bf16,int3", "--gpu-total-bytes", "1000"], "Unknown strategy 'int3'"),
        (["plan", "{config}", "--gpu-share", "0", "--gpu-total-bytes", "1000"], "GPU share must be in (0, 1]"),
    ],
)
def test_bad_input_exits_2_with_the_fix(qwen2_vl_7b_config, run, args, fragment):
    completed = run(*[arg.format(config=qwen2_vl_7b_config) for arg in args])

    assert completed.returncode == 2
    assert fragment in completed.stderr


def test_a_checkpoint_with_its_own_code_is_planned_only_with_trust_remote_code(tmp_path, run):
    folder = tmp_path / "MiniCPM-V-2_6"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "minicpmv", "auto_map": {"AutoConfig": "configuration_minicpm.MiniCPMVConfig"}})
    )

    completed = run("plan", str(folder), "--device", "cpu")

    assert completed.returncode == 2
    assert "--trust-remote-code" in completed.stderr


def test_plan_without_a_gpu_prints_every_precision_and_plans_for_the_cpu(qwen2_vl_7b_config, run, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # what a machine without a GPU looks like, on any host
    completed = run("plan", str(qwen2_vl_7b_config), "--json")
    people = run("plan", str(qwen2_vl_7b_config))

    plan = json.loads(completed.stdout)
    sizes = plan["sizes_bytes"]
    assert list(sizes) == ["fp32", "bf16", "int8", "nf4"]
    assert sizes["fp32"] == pytest.approx(8_291_375_616 * 4, rel=0.001)
    assert sizes["fp32"] > sizes["bf16"] > sizes["int8"] > sizes["nf4"]
    assert plan["device"] == "cpu" and "--gpu-total-bytes" in plan["note"]
    assert [row["strategy"] for row in plan["strategies"]] == ["fp32", "bf16", "int8", "nf4"]
    assert people.stdout.splitlines()[1].startswith("weights: fp32 ")
    assert "No GPU visible: planned for this machine's CPU" in people.stdout
