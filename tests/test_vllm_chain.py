"""vLLM as a link of the loading chain, for real (vLLM's CPU build, in its own environment): a vLLM start-up that
fails for memory is shut down, recorded with the plan's numbers, and the chain's next link (transformers) loads.

The budget here claims 2 TiB, so the chain tries vLLM; vLLM's worker then measures the host and refuses a KV cache
of about 1 TiB, as a GPU's profiling run refuses one that does not fit. Skipped without vLLM's environment."""

import pytest
from vllm_scripts import run_in_vllm_environment

pytestmark = [pytest.mark.component, pytest.mark.vllm]

SCRIPT = """
import json, sys
from memory.budget import MemoryBudget
from memory.strategy import parse_strategy
from models.engines.vllm.memory_plan import VllmShape
from models.adapters.hf_adapter import HuggingFaceVisionLanguageAdapter
from models.adapters.loading import load_adapter
from models.engines.vllm.adapter import VllmAdapter, VllmSettings
from tests.vllm_processes import engine_cores_left

path = sys.argv[1]
budget = MemoryBudget(device="cpu", weights_bytes=2 * 2**40, limit_bytes=2 * 2**40, available_bytes=2 * 2**40,
                      context_bytes=0, reserve_bytes=0)
# 32 MiB a token in our plan (vLLM is told only the KV bytes): one 4096-token sequence needs 128 GiB.
shape = VllmShape(kv_bytes_per_token=32 * 2**20, max_model_len=4096, max_num_seqs=8)
settings = VllmSettings(shape=shape, limit_mm_per_prompt={"image": 1, "video": 1}, share=1.0, num_threads=1,
                        compile="eager")  # compiled is the integration test's (test_vllm_engine)

def make(model_path, strategy):
    if strategy.engine == "vllm":
        return VllmAdapter(model_path, strategy, settings=settings, weights_bytes=2_000_000, budget=lambda: budget)
    return HuggingFaceVisionLanguageAdapter(model_path, strategy=strategy)

chain = (parse_strategy("fp32", "cpu", "vllm"), parse_strategy("fp32", "cpu"))
loaded = load_adapter(path, chain, measure_budget=lambda strategy: budget, oom_retries=0, retry_delay_s=0,
                      make_adapter=make)
print(json.dumps({"report": loaded.report.to_dict(), "engine_cores_left": engine_cores_left()}))
"""


def test_a_vllm_start_up_that_fails_for_memory_hands_over_to_the_next_link(tiny_model_path):
    result = run_in_vllm_environment("-c", SCRIPT, str(tiny_model_path))

    vllm_attempt, transformers_attempt = result["report"]["attempts"]
    assert vllm_attempt["strategy"] == "vllm-fp32" and vllm_attempt["outcome"] == "out_of_memory"
    assert "vLLM did not start as vllm-fp32" in vllm_attempt["reason"]  # with the plan's arithmetic
    assert "KV cache" in vllm_attempt["reason"]
    assert transformers_attempt["strategy"] == "fp32" and transformers_attempt["outcome"] == "loaded"
    assert result["report"]["precision"] == "fp32"
    assert result["engine_cores_left"] == []
