"""Which engine a replica runs, decided in the replica's own environment, and the loading chain that follows.

``engine: transformers`` runs the group's ``chain`` on our engines. ``engine: vllm`` and ``engine: auto`` run
vLLM's links first (``vllm_chain``: bf16, fp8, nf4 on a GPU) when vLLM imports here and supports the checkpoint's
architecture, then the same ``chain`` on transformers: a vLLM that cannot start for memory hands over to int8 on
transformers, then to the other group, as any link does. The reason for the choice is logged and shown in
``/v1/memory``.
"""

import dataclasses
import json
import logging
import pathlib
import sys
from typing import Any, Callable

from deployments.config.app_config import AppConfig
from deployments.config.groups import CpuGroupSettings, GpuGroupSettings
from memory.admission import RequestCostModel, RequestSize
from memory.budget import MemoryBudget
from memory.estimate import WeightEstimate, compute_dtype_bytes
from memory.plan import estimate_chain
from memory.strategy import LoadStrategy
from memory.vllm_plan import VllmShape, engine_overhead_bytes, vllm_activation_bytes
from models.base import CheckpointAdapter

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EngineChoice:
    engine: str  # "transformers" or "vllm"
    reason: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def choose_engine(requested: str, model_path: str) -> EngineChoice:
    if requested == "transformers":
        return EngineChoice("transformers", "engine: transformers in the group's config")
    problem, version = _vllm_problem(model_path)
    if problem is None:
        return EngineChoice("vllm", f"engine: {requested}; vLLM {version} imports here and supports the architecture")
    return EngineChoice("transformers", f"engine: {requested}, but {problem}: the transformers chain serves")


def _vllm_problem(model_path: str) -> tuple[str | None, str | None]:
    try:
        import vllm
        from vllm import ModelRegistry
    except ImportError as error:
        return f"vLLM does not import in this environment ({sys.executable}: {error})", None
    try:
        architectures = json.loads((pathlib.Path(model_path) / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError) as error:
        return f"the checkpoint's config.json cannot be read ({error})", vllm.__version__
    supported = set(ModelRegistry.get_supported_archs())
    if not any(architecture in supported for architecture in architectures):
        return f"vLLM {vllm.__version__} does not support {architectures or 'an unnamed architecture'}", vllm.__version__
    return None, vllm.__version__


def _fp8_on_device(device: str) -> bool:
    """fp8 weights need compute capability 8.9 (Ada, Hopper) or newer; vLLM's CPU build has no fp8 here."""
    if device != "cuda":
        return False
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def vllm_links(settings: GpuGroupSettings | CpuGroupSettings, choice: EngineChoice) -> tuple[LoadStrategy, ...]:
    if choice.engine != "vllm":
        return ()
    links = settings.vllm_strategies()
    kept = tuple(link for link in links if link.quantization != "fp8" or _fp8_on_device(link.device))
    if len(kept) < len(links):
        logger.info("vLLM's fp8 link is left out: this device has no fp8 (compute capability 8.9 or newer)")
    return kept


def vllm_shape(
    model_config: Any, strategy: LoadStrategy, max_model_len: int, settings: GpuGroupSettings | CpuGroupSettings
) -> VllmShape:
    """The KV cache's shape for one vLLM link: its bytes a token, and the sequences our limits allow (the plan's
    ``max_model_len``)."""
    dtype_bytes = 4 if strategy.dtype == "float32" else 2  # vLLM keeps the KV cache in the model's dtype
    kv_bytes = RequestCostModel.from_config(model_config, dtype_bytes=dtype_bytes, device=strategy.device).kv_bytes_per_token
    return VllmShape(kv_bytes_per_token=kv_bytes, max_model_len=max_model_len, max_num_seqs=settings.max_batch_size)


def with_engine_overhead(
    weights: dict[LoadStrategy, WeightEstimate], shapes: dict[LoadStrategy, VllmShape]
) -> dict[LoadStrategy, WeightEstimate]:
    """The chain's estimates; a vLLM link's also holds the smallest KV cache vLLM starts with (and its processes
    on the CPU), so a budget too small for it is skipped, not tried. Each part keeps its name."""
    estimates = dict(weights)
    for strategy, shape in shapes.items():
        overhead = engine_overhead_bytes(strategy.device, shape)
        estimate = weights[strategy]
        estimates[strategy] = dataclasses.replace(
            estimate, total_bytes=estimate.total_bytes + sum(overhead.values()), overhead_bytes=tuple(overhead.items())
        )
    return estimates


def vllm_reserves(
    model_config: Any, shapes: dict[LoadStrategy, VllmShape], largest_request: RequestSize
) -> dict[LoadStrategy, tuple[int, str]]:
    """What each vLLM link's budget keeps back for activations, and its name: vLLM's own peak
    (:func:`memory.vllm_plan.vllm_activation_bytes`), not the transformers engine's eager-attention reserve."""
    return {
        strategy: (
            vllm_activation_bytes(
                RequestCostModel.from_config(model_config, dtype_bytes=compute_dtype_bytes(strategy), device=strategy.device),
                shape, largest_request,
            ),
            f"vLLM's activations ({shape.max_num_batched_tokens} batched tokens)",
        )
        for strategy, shape in shapes.items()
    }


def engine_adapter_factory(
    transformers_factory: Callable[[str, LoadStrategy], CheckpointAdapter],
    *,
    config: AppConfig,
    settings: GpuGroupSettings | CpuGroupSettings,
    shapes: dict[LoadStrategy, VllmShape],
    weights: dict[LoadStrategy, int],
    budget: Callable[[], MemoryBudget | None],
    share: float,
) -> Callable[[str, LoadStrategy], CheckpointAdapter]:
    """``make(model_path, strategy)``: a :class:`~models.vllm_engine.adapter.VllmAdapter` for vLLM's links, the
    transformers adapter for the rest."""

    def make(model_path: str, strategy: LoadStrategy) -> CheckpointAdapter:
        if strategy.engine != "vllm":
            return transformers_factory(model_path, strategy)
        from models.vllm_engine.adapter import VllmAdapter, VllmSettings

        media = config.limits.max_media_parts
        return VllmAdapter(
            model_path,
            strategy,
            settings=VllmSettings(
                shape=shapes[strategy],
                limit_mm_per_prompt={"image": media, "video": media},
                share=share,
                num_threads=max(1, int(settings.num_cpus)),
                trust_remote_code=config.model.trust_remote_code,
                compile=settings.vllm_compile,
            ),
            weights_bytes=weights[strategy],
            budget=budget,
        )

    return make


@dataclasses.dataclass(frozen=True)
class EngineChain:
    """What a replica's loader gets: the engine chosen and why, the chain (vLLM's links first, if any), each link's
    estimate, and how to make each link's adapter."""

    choice: EngineChoice
    chain: tuple[LoadStrategy, ...]
    estimates: dict[LoadStrategy, WeightEstimate]
    make_adapter: Callable[[str, LoadStrategy], CheckpointAdapter]
    reserves: dict[LoadStrategy, tuple[int, str]]  # a vLLM link's activation reserve, vLLM's own; others: the group's


def engine_chain(
    *,
    model_path: str,
    model_config: Any,
    config: AppConfig,
    settings: GpuGroupSettings | CpuGroupSettings,
    transformers_chain: tuple[LoadStrategy, ...],
    transformers_factory: Callable[[str, LoadStrategy], CheckpointAdapter],
    budget: Callable[[], MemoryBudget | None],
    share: float,
    largest_request: RequestSize,
    max_model_len: int,
) -> EngineChain:
    choice = choose_engine(settings.engine, model_path)
    links = vllm_links(settings, choice)
    shapes = {link: vllm_shape(model_config, link, max_model_len, settings) for link in links}
    chain = links + transformers_chain
    weights = estimate_chain(model_config, chain)  # one meta-device model per dtype, for both engines' links
    return EngineChain(
        choice=choice,
        chain=chain,
        estimates=with_engine_overhead(weights, shapes),
        make_adapter=engine_adapter_factory(
            transformers_factory, config=config, settings=settings, shapes=shapes,
            weights={link: weights[link].total_bytes for link in links}, budget=budget, share=share,
        ),
        reserves=vllm_reserves(model_config, shapes, largest_request),
    )
