"""Which engine serves a loaded adapter, started with the replica's limits: the one place that knows both.

:func:`start_engine` returns an :class:`~models.engines.contract.Engine`: the adapter's own when its library brings one
(vLLM: :class:`~models.engines.vllm.engine.VllmEngine`), a
:class:`~models.engines.transformers.scheduler.BatchScheduler` when the adapter declares batch steps
(:meth:`~models.adapters.base.ModelAdapter.batch_engine`), else a :class:`~models.engines.transformers.serial_scheduler.SerialScheduler`.
"""

import dataclasses
from typing import Any, Callable

from memory.admission import RequestCostModel
from memory.strategy import LoadStrategy
from models.adapters.base import CheckpointAdapter
from models.decoding.grammar_server import SchemaCompileLimits
from models.engines.contract import Engine
from models.engines.transformers.scheduler import BatchLimits, BatchScheduler
from models.engines.transformers.serial_scheduler import SerialScheduler
from models.media.media_cache import MediaCache
from models.media.request_shrink import ShrinkMinimum


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """What a replica's config and budget give its engine."""

    max_batch_size: int
    max_waiting: int  # requests held: the running batch plus the queue
    headroom_bytes: int  # the budget less the measured weights: what admitted requests may use together
    max_prefill_tokens: int
    shrink_minimum: ShrinkMinimum
    schema_compile: SchemaCompileLimits
    name: str = "engine"
    media_cache_bytes: int = 0  # the encoded media kept by identity (the group's media_cache_bytes); 0: none


def start_engine(
    adapter: CheckpointAdapter,
    strategy: LoadStrategy,
    model_config: Any,
    settings: EngineSettings,
    *,
    on_out_of_memory: Callable[[str], None] = lambda outcome: None,
) -> Engine:
    """The engine for ``adapter`` (loaded with ``strategy``), running its own thread until ``close``."""
    own = adapter.own_engine(max_batch_size=settings.max_batch_size, max_waiting=settings.max_waiting, name=settings.name,
                             schema_compile=settings.schema_compile, media_cache_bytes=settings.media_cache_bytes)
    if own is not None:
        return own
    steps = adapter.batch_engine()
    if steps is None:
        return SerialScheduler(adapter, max_waiting=settings.max_waiting)
    costs = RequestCostModel.from_config(model_config, dtype_bytes=steps.kv_dtype_bytes, device=strategy.device)
    limits = BatchLimits(
        max_batch_size=settings.max_batch_size,
        max_waiting=settings.max_waiting,
        headroom_bytes=settings.headroom_bytes,
        max_prefill_tokens=settings.max_prefill_tokens,
        schema_compile=settings.schema_compile,
    )
    media_cache = MediaCache(settings.media_cache_bytes, kind="encoder_and_prefix") if settings.media_cache_bytes else None
    return BatchScheduler(
        steps, costs, limits, shrink_minimum=settings.shrink_minimum, on_out_of_memory=on_out_of_memory, name=settings.name,
        media_cache=media_cache,
    )
