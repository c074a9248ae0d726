"""vLLM's async engine on an event loop of its own, in a thread of the replica's process.

The engine contract is threads and sinks (:mod:`models.engines.contract`); vLLM's ``AsyncLLM`` is asyncio. One loop thread
owns the ``AsyncLLM``: it is created there, every request's generator runs there, and :meth:`VllmRuntime.shutdown`
stops vLLM's engine-core process before the loop. The replica's own event loop (Ray Serve's) never runs vLLM code.
"""

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
from typing import Any, Awaitable, Callable, TypeVar

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.metrics.loggers import StatLoggerBase

logger = logging.getLogger(__name__)

Result = TypeVar("Result")


@dataclasses.dataclass
class VllmFigures:
    """vLLM's own figures, as its scheduler reports them each step (read from other threads)."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    preemptions: int = 0
    processor_cache_queries: int = 0  # media items looked up in vLLM's multimodal processor cache
    processor_cache_hits: int = 0

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "prefix_cache_hit_rate": self.prefix_cache_hit_rate}


def _figures_logger(figures: VllmFigures) -> Callable[..., StatLoggerBase]:
    class FiguresLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
            if scheduler_stats is not None:
                figures.running = scheduler_stats.num_running_reqs
                figures.waiting = scheduler_stats.num_waiting_reqs
                figures.kv_cache_usage = float(scheduler_stats.kv_cache_usage)
                figures.prefix_cache_queries += scheduler_stats.prefix_cache_stats.queries
                figures.prefix_cache_hits += scheduler_stats.prefix_cache_stats.hits
            if iteration_stats is not None:
                figures.preemptions += getattr(iteration_stats, "num_preempted_reqs", 0)
            if mm_cache_stats is not None:
                figures.processor_cache_queries += mm_cache_stats.queries
                figures.processor_cache_hits += mm_cache_stats.hits

        def log_engine_initialized(self) -> None:
            pass

    return FiguresLogger


class VllmRuntime:
    """Starts ``AsyncLLM`` with ``engine_args`` on its own loop; runs coroutines there for other threads."""

    def __init__(self, engine_args: dict[str, Any], *, name: str = "vllm") -> None:
        self.figures = VllmFigures()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"{name}-loop", daemon=True)
        self._thread.start()
        self.engine: AsyncLLM | None = None
        try:
            self.engine = self.call(self._start(engine_args))
        except BaseException:
            self._stop_loop()
            raise

    async def _start(self, engine_args: dict[str, Any]) -> AsyncLLM:
        return AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args), stat_loggers=[_figures_logger(self.figures)])

    def call(self, coroutine: Awaitable[Result], timeout_s: float | None = None) -> Result:
        """Run ``coroutine`` on the engine's loop and wait for its result (never from that loop)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def spawn(self, coroutine: Awaitable[Any]) -> concurrent.futures.Future:
        """Run ``coroutine`` on the engine's loop without waiting."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    @property
    def dead_reason(self) -> str | None:
        """Why the engine can no longer serve (its core process died, say); ``None`` while it can."""
        engine = self.engine
        if engine is None:
            return "vLLM's engine is shut down"
        if engine.errored:
            return "vLLM's engine core died (EngineDeadError): Serve replaces this replica"
        return None

    def shutdown(self) -> None:
        """Stop vLLM's engine-core process and the loop; safe to call twice."""
        engine, self.engine = self.engine, None
        if engine is not None:
            try:
                engine.shutdown()
            except Exception as error:  # noqa: BLE001 - a failed shutdown must not keep the loop alive
                logger.warning("vLLM's shutdown failed: %s", error)
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
