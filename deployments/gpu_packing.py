"""``num_gpus: auto``: the GPU group's share (and its floor replicas'), planned when the app is built.

The app builder calls :func:`resolve_gpu_share` before it creates the deployments: from the model's config
(no weights read), the chain (above ``min_precision``), the activation reserve for the request limits and
the CUDA context, :func:`memory.packing.plan_share` picks the chain's first precision that fits a GPU and the
smallest share on ``num_gpus_grid`` that holds it. With ``gpu_group.floor.max_replicas`` above 0 and
``floor.num_gpus: auto``, the floor replicas get the smallest share that holds ``min_precision``. The GPU is
``gpu_total_bytes``, else the one visible where the app is built. Replicas then get a plain number: their
budget is that share of the card.
"""

import logging

from deployments.config import AppConfig, ConfigError, GpuGroupSettings
from deployments.replica_inputs import model_path, request_shape
from memory import MemorySnapshot
from memory.estimate import activation_reserve_bytes, load_model_config
from memory.packing import PackingError, SharePlan, plan_share
from memory.plan import estimate_chain
from memory.probe import GpuBackend
from memory.strategy import parse_chain

logger = logging.getLogger(__name__)


def resolve_gpu_share(config: AppConfig, *, gpu_backend: GpuBackend | None = None) -> tuple[AppConfig, SharePlan | None]:
    """The config with ``gpu_group.num_gpus`` (and ``floor.num_gpus``) numbers, and the plan that chose the GPU
    group's share (``None`` when it was not ``auto``)."""
    settings = config.gpu_group
    plan_group = settings.enabled and settings.num_gpus == "auto"
    plan_floor = config.floor_enabled and settings.floor.num_gpus == "auto"
    if not (plan_group or plan_floor):
        return config, None
    total_bytes = _gpu_total_bytes(settings, gpu_backend)
    model_config = load_model_config(model_path(config), trust_remote_code=config.model.trust_remote_code)
    reserve_bytes = activation_reserve_bytes(model_config, request_shape(config))

    def plan(chain_names: tuple[str, ...], key: str) -> SharePlan:
        chain = parse_chain(chain_names, settings.device)
        weights = {strategy.name: estimate.total_bytes for strategy, estimate in estimate_chain(model_config, chain).items()}
        try:
            return plan_share(
                weights, total_bytes=total_bytes, reserve_bytes=reserve_bytes, context_bytes=settings.cuda_context_bytes,
                grid=settings.num_gpus_grid,
            )
        except PackingError as error:
            raise ConfigError(f"{key} 'auto': {error}") from error

    group_plan, update = None, {}
    if plan_group:
        group_plan = plan(tuple(strategy.name for strategy in settings.strategies()), "gpu_group.num_gpus")
        logger.info("%s", group_plan.explain())
        update["num_gpus"] = group_plan.chosen.share
    if plan_floor:
        floor_plan = plan((settings.min_precision,), "gpu_group.floor.num_gpus")
        logger.info("Floor replicas (%s): %s", settings.min_precision, floor_plan.explain())
        update["floor"] = settings.floor.model_copy(update={"num_gpus": floor_plan.chosen.share})
    return config.model_copy(update={"gpu_group": settings.model_copy(update=update)}), group_plan


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
