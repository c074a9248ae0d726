"""The loading chain on a real GPU. Each test has a CPU twin in tests/test_memory_*.py.

Run on a GPU machine with ``bin/test tests/gpu``; without CUDA every test here is skipped.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from weights_only import weights_only_adapter

from memory.chain_estimate import estimate_chain
from memory.cleanup import release_memory
from memory.estimate import load_model_config
from memory.gpu import limit_to_share, measure_gpu_budget
from memory.probe import MemorySnapshot
from memory.strategy import parse_chain
from models.adapters.loading import load_adapter
from models.adapters.reference_configs import build_random_model

pytestmark = pytest.mark.gpu

GPU_CHAIN = parse_chain(["bf16", "int8", "nf4"], "cuda")


@pytest.fixture(scope="module")
def smolvlm_500m(tmp_path_factory):
    return str(build_random_model("smolvlm-500m", tmp_path_factory.mktemp("smolvlm-500m")))


def test_a_real_out_of_memory_in_bf16_falls_to_int8_under_a_per_process_fraction(smolvlm_500m, record_figure):
    estimates = {s.name: e.total_bytes for s, e in estimate_chain(load_model_config(smolvlm_500m), GPU_CHAIN).items()}
    total = torch.cuda.get_device_properties(0).total_memory
    # Cap the allocator between the int8 and bf16 estimates, but tell the loader the budget is
    # larger, so bf16 is tried and meets a real CUDA out-of-memory instead of being skipped.
    cap_bytes = (estimates["bf16"] + estimates["int8"]) // 2
    limit_to_share(cap_bytes / total)
    generous = measure_gpu_budget(share=1.0, context_bytes=0, reserve_bytes=0)
    try:
        loaded = load_adapter(
            smolvlm_500m, GPU_CHAIN, measure_budget=lambda strategy: generous, oom_retries=0,
            make_adapter=weights_only_adapter,
        )
        outcomes = [(a.strategy, a.outcome) for a in loaded.report.attempts]
        assert outcomes == [("bf16", "out_of_memory"), ("int8", "loaded")]
        measured = loaded.report.loaded.measured_bytes
        assert abs(measured - estimates["int8"]) / measured <= 0.05
        (gpu,) = MemorySnapshot.measure().gpus
        assert gpu.torch is not None
        assert gpu.torch.num_ooms >= 1
        assert 0.0 <= gpu.torch.fragmentation_ratio < 1.0
        record_figure("oom_falls_to_int8", {"estimates": estimates, "cap_bytes": cap_bytes, "report": loaded.report.to_dict(), "gpu": gpu.to_dict()})
    finally:
        limit_to_share(1.0)
        release_memory()


@pytest.mark.parametrize("strategy_name", ["bf16", "int8", "nf4"])
def test_estimates_are_within_five_percent_on_the_gpu(smolvlm_500m, strategy_name):
    chain = parse_chain([strategy_name], "cuda")
    estimate = estimate_chain(load_model_config(smolvlm_500m), chain)[chain[0]].total_bytes
    budget = measure_gpu_budget(share=1.0, context_bytes=0, reserve_bytes=0)

    loaded = load_adapter(smolvlm_500m, chain, measure_budget=lambda strategy: budget, make_adapter=weights_only_adapter)

    measured = loaded.report.loaded.measured_bytes
    assert abs(estimate - measured) / measured <= 0.05, (estimate, measured)
    del loaded
    release_memory()


def test_expandable_segments_take_effect_when_set_before_cuda_starts():
    script = (
        "import json, torch\n"
        "x = torch.ones(1024, device='cuda')\n"
        "from memory.allocator import read_allocator_settings\n"
        "print(json.dumps(read_allocator_settings().to_dict()))"
    )
    env = {**os.environ, "PYTORCH_ALLOC_CONF": "expandable_segments:True"}

    completed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True, timeout=300)

    report = json.loads(completed.stdout)
    assert report["effective"]["expandable_segments"] == "True"
    assert "confirmed from the allocator's segments" in " ".join(report["notes"])
    assert report["matches"] is True
