"""Which engine serves a loaded adapter, started with the replica's limits: the one place that knows both.

:func:`start_engine` returns an :class:`~models.engine.Engine`: the adapter's own when its library brings one
(vLLM: :class:`~models.vllm_engine.engine.VllmEngine`), a
:class:`~models.scheduler.BatchScheduler` when the adapter declares batch steps
(:meth:`~models.base.ModelAdapter.batch_engine`), else a :class:`~models.serial_scheduler.SerialScheduler`.
"""

import dataclasses
from typing import Any, Callable

from memory.admission import RequestCostModel
from memory.strategy import LoadStrategy
from models.base import CheckpointAdapter
from models.engine import Engine
from models.grammar_server import SchemaCompileLimits
from models.request_shrink import ShrinkFloor
from models.scheduler import BatchLimits, BatchScheduler
from models.serial_scheduler import SerialScheduler


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """What a replica's config and budget give its engine."""

    max_batch_size: int
    max_waiting: int  # requests held: the running batch plus the queue
    headroom_bytes: int  # the budget less the measured weights: what admitted requests may use together
    max_prefill_tokens: int
    shrink_floor: ShrinkFloor
    schema_compile: SchemaCompileLimits
    name: str = "engine"


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
                             schema_compile=settings.schema_compile)
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
    return BatchScheduler(
        steps, costs, limits, shrink_floor=settings.shrink_floor, on_out_of_memory=on_out_of_memory, name=settings.name
    )
