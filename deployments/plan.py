"""The resolved plan: what the config as written (:mod:`deployments.config`) comes to on this cluster.

:func:`resolve_app` turns an :class:`~deployments.config.AppConfig` into an :class:`AppPlan`, once, when the
app is built: the model's folder (the built-in tiny model is built here), the adapter chosen from the
checkpoint (the one step that imports transformers), the largest request the limits allow
(:func:`largest_request_for`), and per enabled group a :class:`GroupPlan`: its settings with every derived
value filled in and validated again (``num_gpus`` a number, the floor replicas' settings built from the GPU
group's), its loading chain parsed, and its activation reserve: that largest request priced by admission's
cost model on the chain's first strategy (:func:`memory.estimate.activation_reserve_bytes`), and the Python its
replicas run in (:func:`replica_python`: the environment of its first engine that has one here). Replicas are built
from the plan, never from the raw config.

``num_gpus: auto``: from the model's config (no weights read), the chain (above ``min_precision``), the
activation reserve for the request limits and the CUDA context, :func:`memory.packing.plan_share` picks the
chain's first precision that fits a GPU and the smallest share on ``num_gpus_grid`` that holds it. With
``gpu_group.floor.max_replicas`` above 0 and ``floor.num_gpus: auto``, the floor replicas get the smallest
share that holds ``min_precision``. The GPU is ``gpu_total_bytes``, else the one visible where the app is built.
"""

import dataclasses
import logging
import pathlib
from typing import Any

import pydantic

from deployments.config.app_config import AppConfig, ConfigError
from deployments.config.groups import CpuGroupSettings, GpuGroupSettings
from deployments.routing.groups import CPU_GROUP, GPU_FLOOR_GROUP, GPU_GROUP
from memory.admission import RequestSize
from memory.chain_estimate import estimate_chain
from memory.estimate import activation_reserve_bytes, load_model_config
from memory.largest_request import largest_request
from memory.packing import PackingError, SharePlan, plan_share
from memory.probe import GpuBackend, MemorySnapshot
from memory.strategy import LoadStrategy, parse_chain
from models.adapters.choice import AdapterChoiceError, choose_adapter
from models.adapters.tiny import ensure_tiny_model
from models.cache_dir import default_cache_dir
from models.checkpoint_source import checkpoint_folder
from models.engines import engines_tried
from models.media.visual_tokens import VisualTokenGeometry
from models.weight_cache import WeightCache

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GroupPlan:
    """One replica group as it runs: validated settings with nothing left to decide, and its parsed chain."""

    group: str
    settings: GpuGroupSettings | CpuGroupSettings  # num_gpus is a number here, never 'auto'
    strategies: tuple[LoadStrategy, ...]
    reserve_bytes: int  # the largest request, priced at strategies[0]: what the loader keeps free beside the weights
    python: str | None = None  # the Python its replicas run in (replica_python); None: the project's own

    @property
    def num_gpus(self) -> float:
        return float(self.settings.num_gpus) if isinstance(self.settings, GpuGroupSettings) else 0.0

    @property
    def on_gpu_share(self) -> bool:
        """Its replicas hold a share of a GPU (``num_gpus``): their budget is measured on the GPU (or its probe), not
        in host memory, and they report their share."""
        return isinstance(self.settings, GpuGroupSettings)

    @property
    def waits_for_load(self) -> bool:
        """The last resort (the CPU group): a request that reaches one of its replicas while it loads waits for the load,
        up to ``routing.cpu_timeout_s`` (what its caller waits), instead of failing. The GPU groups never wait: their
        caller falls back to the next group at once."""
        return self.group == CPU_GROUP


@dataclasses.dataclass(frozen=True)
class AppPlan:
    config: AppConfig  # as written and validated
    model_path: str
    adapter: str
    largest_request: RequestSize  # the largest request the limits allow (largest_request_for)
    max_model_len: int  # the longest sequence one request may make (max_model_len_for): vLLM's, and /v1/models'
    groups: dict[str, GroupPlan]  # the enabled groups, by name
    share_plan: SharePlan | None = None  # how gpu_group.num_gpus: auto chose the GPU group's share

    def group(self, name: str) -> GroupPlan:
        try:
            return self.groups[name]
        except KeyError:
            raise ValueError(f"Replica group {name!r} is not in this plan (enabled: {sorted(self.groups)})") from None

    def weight_cache(self) -> WeightCache | None:
        """The replica's cache of quantized loads (``None`` when ``model.weight_cache_bytes`` is 0)."""
        model = self.config.model
        if model.weight_cache_bytes == 0:
            return None
        root = pathlib.Path(model.weight_cache_dir) if model.weight_cache_dir else default_cache_dir() / "weights"
        return WeightCache(
            root, max_bytes=model.weight_cache_bytes, shared_url=model.weight_cache_url,
            storage_options=model.storage_options,
        )


def checkpoint_on_this_node(config: AppConfig, *, metadata_only: bool = False) -> str:
    """A folder on this node with the checkpoint: the tiny model (built here), a local folder (a volume mounted at
    the same path on every node), or this node's copy of an object store's, fetched once per node. With
    ``metadata_only``, an object store's configs, tokenizer and processor files only: what planning reads."""
    if config.model.source == "tiny":
        return str(ensure_tiny_model())
    return checkpoint_folder(config.model.source, storage_options=config.model.storage_options, metadata_only=metadata_only)


def resolve_app(config: AppConfig, *, gpu_backend: GpuBackend | None = None) -> AppPlan:
    """The plan for ``config``; :class:`~deployments.config.ConfigError` names what cannot be resolved and the fix."""
    model_path = checkpoint_on_this_node(config, metadata_only=True)
    try:
        adapter = choose_adapter(model_path, config.model.adapter, trust_remote_code=config.model.trust_remote_code)
    except AdapterChoiceError as error:
        raise ConfigError(f"Invalid application args in serve_config.yaml:\n  model.source: {error}") from error
    model_config = load_model_config(model_path, trust_remote_code=config.model.trust_remote_code)
    request = largest_request_for(config, model_path)
    gpu_share, floor_share, share_plan = _gpu_shares(config, model_config, request, gpu_backend)
    groups: dict[str, GroupPlan] = {}
    if config.gpu_group.enabled:
        groups[GPU_GROUP] = _group_plan(GPU_GROUP, config.gpu_group, {"num_gpus": gpu_share}, model_config, request)
        if config.floor_enabled:
            gpu = config.gpu_group
            floor = {
                "chain": [gpu.min_precision],
                "num_gpus": floor_share,
                "autoscaling": {
                    **gpu.autoscaling.model_dump(), "min_replicas": 0, "max_replicas": gpu.floor.max_replicas,
                },
                "floor": {},
            }
            groups[GPU_FLOOR_GROUP] = _group_plan(GPU_FLOOR_GROUP, gpu, floor, model_config, request)
    if config.cpu_group.enabled:
        groups[CPU_GROUP] = _group_plan(CPU_GROUP, config.cpu_group, {}, model_config, request)
    return AppPlan(
        config=config, model_path=model_path, adapter=adapter, largest_request=request,
        max_model_len=max_model_len_for(config, model_config), groups=groups, share_plan=share_plan,
    )


def max_model_len_for(config: AppConfig, model_config: Any) -> int:
    """The longest sequence one request may make: its prompt (``limits.max_prompt_tokens``) plus its answer
    (``limits.max_tokens``), capped by the model's positions (``max_position_embeddings``) where its config says them."""
    wanted = config.limits.max_prompt_tokens + config.limits.max_tokens
    text = model_config.get_text_config(decoder=True) if hasattr(model_config, "get_text_config") else model_config
    positions = getattr(text, "max_position_embeddings", None)
    return min(wanted, positions) if positions else wanted


def largest_request_for(config: AppConfig, model_path: str) -> RequestSize:
    """The largest request ``config.limits`` allow, with the checkpoint processor's patch sizes
    (:func:`memory.largest_request.largest_request`): what every group's activation reserve is priced for."""
    limits, geometry = config.limits, VisualTokenGeometry.from_model_folder(model_path)
    return largest_request(
        max_prompt_tokens=limits.max_prompt_tokens,
        max_new_tokens=limits.max_tokens,
        max_media_parts=limits.max_media_parts,
        max_request_frames=limits.max_request_frames,
        max_request_pixels=limits.max_request_pixels,
        pixels_per_frame=limits.max_pixels_per_frame,
        patch_size=geometry.patch_size,
        merge_size=geometry.merge_size,
        temporal_patch_size=geometry.temporal_patch_size,
    )


def _group_plan(
    group: str,
    settings: GpuGroupSettings | CpuGroupSettings,
    update: dict[str, Any],
    model_config: Any,
    request: RequestSize,
) -> GroupPlan:
    """``settings`` with ``update`` applied and validated again, as the group's replicas run them."""
    try:
        resolved = type(settings).model_validate({**settings.model_dump(), **update})
    except pydantic.ValidationError as error:  # a derived value the raw config let through
        raise ConfigError(f"The {group} group's resolved settings do not validate: {error}") from error
    strategies = resolved.strategies()
    return GroupPlan(
        group=group, settings=resolved, strategies=strategies,
        reserve_bytes=activation_reserve_bytes(model_config, request, strategies[0]),
        python=replica_python(group, resolved),
    )


def replica_python(group: str, settings: GpuGroupSettings | CpuGroupSettings) -> str | None:
    """The environment of the group's first engine whose environment is there (``None``: the project's own). An
    engine named in the config whose environment is missing is logged: its replicas run the next engine meanwhile."""
    for spec in engines_tried(settings.engine):
        environment = spec.environment(settings)
        if environment.missing is None:
            return environment.python
        if spec.name == settings.engine:
            logger.warning("Group %s runs on %s but %s; its replicas run the next engine meanwhile", group, spec.name,
                           environment.missing)
    return None


def _gpu_shares(
    config: AppConfig, model_config: Any, request: RequestSize, gpu_backend: GpuBackend | None
) -> tuple[float, float, SharePlan | None]:
    """The GPU group's and the floor replicas' shares of a GPU, planned where they are ``auto``."""
    settings = config.gpu_group
    gpu_share, floor_share = settings.num_gpus, settings.floor.num_gpus
    plan_group = settings.enabled and gpu_share == "auto"
    plan_floor = config.floor_enabled and floor_share == "auto"
    if not (plan_group or plan_floor):
        return _number_or_unused(gpu_share), _number_or_unused(floor_share), None
    total_bytes = _gpu_total_bytes(settings, gpu_backend)

    def plan(chain_names: tuple[str, ...], key: str) -> SharePlan:
        chain = parse_chain(chain_names, settings.device)
        weights = {strategy.name: estimate.total_bytes for strategy, estimate in estimate_chain(model_config, chain).items()}
        try:
            return plan_share(
                weights, total_bytes=total_bytes, reserve_bytes=activation_reserve_bytes(model_config, request, chain[0]), context_bytes=settings.cuda_context_bytes,
                grid=settings.num_gpus_grid,
            )
        except PackingError as error:
            raise ConfigError(f"{key} 'auto': {error}") from error

    group_plan = None
    if plan_group:
        group_plan = plan(tuple(strategy.name for strategy in settings.strategies()), "gpu_group.num_gpus")
        logger.info("%s", group_plan.explain())
        gpu_share = group_plan.chosen.share
    if plan_floor:
        floor_plan = plan((settings.min_precision,), "gpu_group.floor.num_gpus")
        logger.info("Floor replicas (%s): %s", settings.min_precision, floor_plan.explain())
        floor_share = floor_plan.chosen.share
    return _number_or_unused(gpu_share), _number_or_unused(floor_share), group_plan


def _number_or_unused(share: float | str) -> float:
    """A share that stays 'auto' belongs to a group that does not run; any valid number stands in for it."""
    return 1.0 if share == "auto" else float(share)


def _gpu_total_bytes(settings: GpuGroupSettings, gpu_backend: GpuBackend | None) -> int:
    if settings.gpu_total_bytes is not None:
        return settings.gpu_total_bytes
    gpus = MemorySnapshot.measure(gpu_backend).gpus
    if not gpus:
        raise ConfigError(
            "gpu_group.num_gpus (or gpu_group.floor.num_gpus) is 'auto' but no GPU is visible where the app is built: "
            "set gpu_group.gpu_total_bytes to the GPU's memory (e.g. 85899345920 for an 80 GiB card)"
        )
    return gpus[0].total_bytes
