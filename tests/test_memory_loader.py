"""The loading chain on CPU, for real: budgets force the skips, bitsandbytes quantizes on CPU.

The one test double is at the hardware boundary: a load that raises
``torch.OutOfMemoryError``, as CUDA would, since there is no GPU here.
"""

import pytest
import torch
from weights_only import weights_only_adapter

from memory.budget import BudgetError, MemoryBudget, cpu_budget
from memory.chain_estimate import estimate_chain
from memory.chain_load import ModelLoadError, NothingFitsError
from memory.estimate import load_model_config
from memory.out_of_memory import is_out_of_memory
from memory.probe import MemorySnapshot
from memory.strategy import StrategyError, parse_chain, parse_strategy
from models.adapters.hf_adapter import HuggingFaceVisionLanguageAdapter
from models.adapters.loading import load_adapter
from models.adapters.reference_configs import build_random_model
from models.engines.transformers import TRANSFORMERS
from models.requests import ChatMessage, GenerationRequest, TextPart

pytestmark = pytest.mark.unit

CPU_CHAIN = parse_chain(["fp32", "bf16", "int8", "nf4"], "cpu")


def fixed_budget(weights_bytes: int):
    def measure(strategy) -> MemoryBudget:
        return MemoryBudget("cpu", weights_bytes, weights_bytes, weights_bytes, 0, 0)

    return measure


@pytest.fixture(scope="module")
def tiny_estimates(tiny_model_path):
    return {s.name: e.total_bytes for s, e in estimate_chain(load_model_config(tiny_model_path), CPU_CHAIN).items()}


def _answer(adapter) -> int:
    request = GenerationRequest(messages=(ChatMessage("user", (TextPart("hi"),)),), max_new_tokens=2)
    return adapter.generate(request).completion_tokens


@pytest.mark.parametrize(
    ("budget_between", "expected", "skipped"),
    [
        (("fp32", None), "fp32", []),
        (("bf16", "fp32"), "bf16", ["fp32"]),
        (("int8", "bf16"), "int8", ["fp32", "bf16"]),
        (("nf4", "int8"), "nf4", ["fp32", "bf16", "int8"]),
    ],
)
def test_the_budget_picks_the_first_strategy_that_fits(tiny_model_path, tiny_estimates, budget_between, expected, skipped):
    low, high = budget_between
    budget = tiny_estimates[low] if high is None else (tiny_estimates[low] + tiny_estimates[high]) // 2

    loaded = load_adapter(str(tiny_model_path), CPU_CHAIN, measure_budget=fixed_budget(budget))

    assert loaded.strategy.name == expected
    outcomes = [(attempt.strategy, attempt.outcome) for attempt in loaded.report.attempts]
    assert outcomes == [(name, "skipped") for name in skipped] + [(expected, "loaded")]
    for attempt in loaded.report.attempts[:-1]:
        assert attempt.estimate_bytes == tiny_estimates[attempt.strategy] > attempt.budget_bytes == budget
    assert loaded.report.loaded.measured_bytes == tiny_estimates[expected]
    assert _answer(loaded.model) >= 1


def test_below_the_smallest_estimate_one_error_lists_every_attempt(tiny_model_path, tiny_estimates):
    budget = tiny_estimates["nf4"] - 1

    with pytest.raises(NothingFitsError) as raised:
        load_adapter(str(tiny_model_path), CPU_CHAIN, measure_budget=fixed_budget(budget))

    message = str(raised.value)
    for name in ("fp32", "bf16", "int8", "nf4"):
        assert f"{name} on cpu: skipped" in message
    assert "free at least 1 B" in message
    assert [attempt.outcome for attempt in raised.value.report.attempts] == ["skipped"] * 4


def test_a_larger_model_is_quantized_to_int8_on_cpu_when_bf16_does_not_fit(tmp_path):
    path = str(build_random_model("smolvlm-256m-reduced", tmp_path))
    estimates = {s.name: e.total_bytes for s, e in estimate_chain(load_model_config(path), CPU_CHAIN).items()}
    budget = (estimates["bf16"] + estimates["int8"]) // 2

    loaded = load_adapter(path, CPU_CHAIN, measure_budget=fixed_budget(budget), make_adapter=weights_only_adapter)

    assert loaded.strategy.name == "int8"
    assert loaded.report.loaded.measured_bytes <= budget
    assert type(loaded.model.model.model.text_model.layers[0].self_attn.q_proj).__name__ == "Linear8bitLt"


class OutOfMemoryAtLoad(HuggingFaceVisionLanguageAdapter):
    """Raises CUDA's out-of-memory error at the load boundary for the named strategies."""

    failures: dict[str, int] = {}

    def load(self) -> None:
        remaining = OutOfMemoryAtLoad.failures.get(self.strategy.name, 0)
        if remaining:
            OutOfMemoryAtLoad.failures[self.strategy.name] = remaining - 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        super().load()


def test_out_of_memory_cleans_up_and_moves_to_the_next_strategy(tiny_model_path):
    OutOfMemoryAtLoad.failures = {"fp32": 2}
    chain = parse_chain(["fp32", "bf16"], "cpu")

    loaded = load_adapter(
        str(tiny_model_path), chain, measure_budget=fixed_budget(10**9), oom_retries=1, retry_delay_s=0,
        make_adapter=lambda path, strategy: OutOfMemoryAtLoad(path, strategy=strategy),
    )

    assert loaded.strategy.name == "bf16"
    attempts = loaded.report.attempts
    assert [(a.strategy, a.outcome) for a in attempts] == [("fp32", "out_of_memory"), ("fp32", "out_of_memory"), ("bf16", "loaded")]
    assert "retrying after cleanup" in attempts[0].reason
    assert "next strategy" in attempts[1].reason
    assert all(a.freed_bytes is not None for a in attempts[:2])


def test_out_of_memory_that_passes_is_absorbed_by_a_retry(tiny_model_path):
    OutOfMemoryAtLoad.failures = {"fp32": 1}

    loaded = load_adapter(
        str(tiny_model_path), parse_chain(["fp32", "bf16"], "cpu"), measure_budget=fixed_budget(10**9), oom_retries=1,
        retry_delay_s=0, make_adapter=lambda path, strategy: OutOfMemoryAtLoad(path, strategy=strategy),
    )

    assert loaded.strategy.name == "fp32"
    assert [a.outcome for a in loaded.report.attempts] == ["out_of_memory", "loaded"]


def test_a_non_memory_error_fails_at_once_without_trying_smaller_precisions(tiny_model_path, tmp_path):
    # A checkpoint folder with a valid config and no weights.
    (tmp_path / "config.json").write_text((tiny_model_path / "config.json").read_text())

    with pytest.raises(ModelLoadError, match="non-memory error; a smaller precision cannot fix it") as raised:
        load_adapter(str(tmp_path), CPU_CHAIN, measure_budget=fixed_budget(10**9), make_adapter=weights_only_adapter)

    assert [(a.strategy, a.outcome) for a in raised.value.report.attempts] == [("fp32", "failed")]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (torch.OutOfMemoryError("CUDA out of memory"), True),
        (MemoryError(), True),
        (RuntimeError("CUDA error: out of memory"), True),
        (RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"), True),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1000 bytes"), True),
        (RuntimeError("shape '[96, 0]' is invalid"), False),
        (OSError("no file named model.safetensors"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_out_of_memory_is_recognised_by_type_then_message(error, expected):
    assert is_out_of_memory(error) is expected


def test_a_chain_with_no_strategy_is_refused():
    with pytest.raises(StrategyError, match="has no strategy"):
        parse_chain([], "cuda")


def test_an_unknown_strategy_names_the_known_ones():
    with pytest.raises(StrategyError, match="use one of fp32, bf16, fp16, fp8, int8, nf4"):
        parse_strategy("int4", "cpu")
    with pytest.raises(StrategyError, match="for the transformers engine; use one of fp32, bf16, fp16, int8, nf4"):
        TRANSFORMERS.parse_chain(["fp32", "int4"], "cpu")


def test_a_budget_of_zero_is_refused_before_anything_loads():
    with pytest.raises(BudgetError, match="must be above zero"):
        cpu_budget(MemorySnapshot.measure(), configured_bytes=0, reserve_bytes=0)


def test_a_link_whose_warm_up_fails_is_let_go_and_the_next_tried_while_a_skipped_one_keeps_the_wait_for_memory(tiny_model_path):
    warmed: list[str] = []
    let_go: list[str] = []

    class Tracked(HuggingFaceVisionLanguageAdapter):
        def unload(self) -> None:
            let_go.append(self.strategy.name)
            super().unload()

    def warm_up(adapter, strategy):
        warmed.append(strategy.name)
        if strategy.name in ("fp32", "int8"):
            raise KeyError("no such token")

    loaded = load_adapter(
        str(tiny_model_path), parse_chain(["fp32", "bf16"], "cpu"), measure_budget=fixed_budget(10**9),
        make_adapter=lambda path, strategy: Tracked(path, strategy=strategy), warm_up=warm_up,
    )

    assert loaded.strategy.name == "bf16" and warmed == ["fp32", "bf16"] and let_go == ["fp32"]
    (unusable, _) = loaded.report.attempts
    assert (unusable.outcome, unusable.reason) == ("unusable", "loaded, but its warm-up generation failed: KeyError: 'no such token'")

    # The next link skipped for memory: memory may free later, so the replica waits instead of failing.
    chain = parse_chain(["int8", "fp32"], "cpu")
    int8_estimate = estimate_chain(load_model_config(str(tiny_model_path)), chain)[chain[0]].total_bytes
    with pytest.raises(NothingFitsError) as raised:
        load_adapter(str(tiny_model_path), chain, measure_budget=fixed_budget(int8_estimate),
                     make_adapter=lambda path, strategy: Tracked(path, strategy=strategy), warm_up=warm_up)
    assert [(a.strategy, a.outcome) for a in raised.value.report.attempts] == [("int8", "unusable"), ("fp32", "skipped")]
