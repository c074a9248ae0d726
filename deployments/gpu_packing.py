"""``gpu_group.num_gpus: auto``: the GPU group's share, planned when the app is built.

The app builder calls :func:`resolve_gpu_share` before it creates the deployments: from the model's config
(no weights read), the chain (above ``min_precision``), the activation reserve for the request limits and
the CUDA context, :func:`memory.packing.plan_share` picks the chain's first precision that fits a GPU and the
smallest share on ``num_gpus_grid`` that holds it. The GPU is ``gpu_total_bytes``, else the one visible where
the app is built. Replicas then get a plain number: their budget is that share of the card.
"""

import logging

from deployments.config import AppConfig, ConfigError
from deployments.replica_inputs import model_path, request_shape
from memory import MemorySnapshot
from memory.estimate import activation_reserve_bytes, load_model_config
from memory.packing import PackingError, SharePlan, plan_share
from memory.plan import estimate_chain
from memory.probe import GpuBackend

logger = logging.getLogger(__name__)


def resolve_gpu_share(config: AppConfig, *, gpu_backend: GpuBackend | None = None) -> tuple[AppConfig, SharePlan | None]:
    """The config with ``gpu_group.num_gpus`` a number, and the plan that chose it (``None`` when not ``auto``)."""
    settings = config.gpu_group
    if not settings.enabled or settings.num_gpus != "auto":
        return config, None
    total_bytes = settings.gpu_total_bytes
    if total_bytes is None:
        gpus = MemorySnapshot.measure(gpu_backend).gpus
        if not gpus:
            raise ConfigError(
                "gpu_group.num_gpus is 'auto' but no GPU is visible where the app is built: set "
                "gpu_group.gpu_total_bytes to the GPU's memory (e.g. 85899345920 for an 80 GiB card)"
            )
        total_bytes = gpus[0].total_bytes
    model_config = load_model_config(model_path(config), trust_remote_code=config.model.trust_remote_code)
    chain = settings.strategies()
    weights = {strategy.name: estimate.total_bytes for strategy, estimate in estimate_chain(model_config, chain).items()}
    try:
        plan = plan_share(
            weights,
            total_bytes=total_bytes,
            reserve_bytes=activation_reserve_bytes(model_config, request_shape(config)),
            context_bytes=settings.cuda_context_bytes,
            grid=settings.num_gpus_grid,
        )
    except PackingError as error:
        raise ConfigError(f"gpu_group.num_gpus 'auto': {error}") from error
    logger.info("%s", plan.explain())
    resolved = config.model_copy(update={"gpu_group": settings.model_copy(update={"num_gpus": plan.chosen.share})})
    return resolved, plan
