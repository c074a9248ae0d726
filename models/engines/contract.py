"""The engine contract: how a replica runs a model. A replica knows this file, never an engine's class.

An engine owns a loaded model and answers many requests with it. The contract, all of it:

- **submit** a request: :meth:`Engine.submit` checks it in the caller's thread and queues it, or raises at
  once what the request itself gets wrong (an option the engine does not honour, a prompt over its limit,
  a request too big even at the shrink floor) or :class:`~models.errors.ReplicaBusyError` when full;
- **stream** its tokens: the engine calls the request's :class:`RequestSink` from its own thread:
  ``opened`` once admitted, ``text`` per piece, then ``finished`` or ``failed``;
- **cancel** it: set the ``stop`` event given to ``submit``; the engine drops the request at its next
  step (waiting or running) and counts it in ``stats.cancelled``; a sink that raises (its caller went away) is a
  cancel of that request, never the engine's end (:class:`GuardedSink`);
- **describe** its memory and load: :meth:`Engine.describe`, a JSON-ready dict with the
  :class:`EngineStats` and what the engine is; :meth:`Engine.health_problem` says when it can no longer serve;
- **declare** what it honours: :attr:`Engine.capabilities` (batches or not, which decoding options);
- **prepare** structured output ahead of the first request that asks for it: :meth:`Engine.prepare_structured_output`
  (the grammar compile server's start, seconds: with jobs on, the replica calls it before it reports ready);
- **name** the media it holds encoded: :meth:`Engine.cached_media` (identities, most recent first), for the
  affinity router;
- **close**: stop taking requests; waiting ones fail with :class:`~models.errors.SchedulerClosedError`.

Three engines implement it: :class:`models.engines.transformers.scheduler.BatchScheduler` (continuous batching on a
transformers model), :class:`models.engines.transformers.serial_scheduler.SerialScheduler` (one request at a time, for
adapters with their own generate loop) and :class:`models.engines.vllm.engine.VllmEngine` (vLLM's async
engine, in vLLM's own environment). :func:`models.engines.start.start_engine` picks one for an adapter.
No torch here: the metrics in the ingress's process read :class:`EngineStats`.
"""

import dataclasses
import logging
import threading
from typing import Any, Literal, Protocol

from memory.admission import RequestCost
from models.errors import InvalidParameterError
from models.media.media_cache import MediaCacheStats
from models.media.request_shrink import OomRetry
from models.requests import DecodingOptions, GenerationRequest, GenerationResult, TextDelta

logger = logging.getLogger(__name__)

EngineMode = Literal["continuous", "serial"]


class RequestSink(Protocol):
    """Where one request's events go (called from the engine's thread).

    ``streams_text``: whether the caller forwards text pieces as they come. When it does not, an engine may send
    fewer, larger pieces (vLLM's engine sends the first token's, then the rest at the end)."""

    streams_text: bool

    def opened(
        self, used: GenerationRequest, retries: tuple[OomRetry, ...], cost: RequestCost, prompt_tokens: int = 0
    ) -> None: ...

    def text(self, delta: TextDelta) -> None: ...

    def finished(self, result: GenerationResult) -> None: ...

    def failed(self, error: BaseException) -> None: ...


class GuardedSink:
    """A request's sink as an engine calls it: a caller that went away (its sink raises: its event loop closed, its
    client gone) ends that request, never the engine's thread. The request's ``stop`` is set, so the engine drops it
    at its next step, as a cancel; later calls go nowhere. Every engine wraps the sink it is given in one."""

    def __init__(self, sink: RequestSink, stop: threading.Event) -> None:
        self._sink = sink
        self._stop = stop
        self._gone = False
        self.streams_text = sink.streams_text

    def opened(
        self, used: GenerationRequest, retries: tuple[OomRetry, ...], cost: RequestCost, prompt_tokens: int = 0
    ) -> None:
        self._call("opened", used, retries, cost, prompt_tokens)

    def text(self, delta: TextDelta) -> None:
        self._call("text", delta)

    def finished(self, result: GenerationResult) -> None:
        self._call("finished", result)

    def failed(self, error: BaseException) -> None:
        self._call("failed", error)

    def _call(self, name: str, *args: Any) -> None:
        if self._gone:
            return
        try:
            getattr(self._sink, name)(*args)
        except Exception as error:  # noqa: BLE001 - the caller's failure, not the engine's
            self._gone = True
            self._stop.set()
            logger.warning("A request's caller went away (%s in %s: %s); the request is dropped", type(error).__name__,
                           name, str(error)[:200])


@dataclasses.dataclass(frozen=True)
class EngineCapabilities:
    """What an engine declares: whether requests share its steps, and which decoding options it honours.

    A request that sets an option outside ``decoding_options`` is refused by name at submit time."""

    mode: EngineMode
    max_batch_size: int
    decoding_options: frozenset[str]

    @property
    def batches(self) -> bool:
        return self.mode == "continuous"


@dataclasses.dataclass
class EngineStats:
    """What ``/v1/memory`` and the metrics show; read from other threads, written by the engine."""

    waiting: int = 0
    running: int = 0
    admitted_bytes: int = 0  # the batch's predicted peak, with the inputs held beside it (CPU)
    waiting_bytes: int = 0
    headroom_bytes: int = 0
    waiting_input_bytes: int = 0  # waiting requests' frames and processor tensors, exactly
    peak_admitted_bytes: int = 0
    peak_batch_size: int = 0
    steps: int = 0
    cancelled: int = 0
    last_cancelled_tokens: int | None = None
    request_ooms: int = 0
    decode_splits: int = 0
    prefill_splits: int = 0
    shrunk_up_front: int = 0
    # An engine that keeps a KV cache of its own (vLLM): the part in use, and its prefix-cache hit rate.
    kv_cache_usage: float | None = None
    prefix_cache_hit_rate: float | None = None
    # Its cache of encoded media, keyed by media identity (None: it keeps none).
    media_cache: MediaCacheStats | None = None

    def to_dict(self) -> dict[str, Any]:
        figures = dataclasses.asdict(self)
        figures["media_cache"] = self.media_cache.to_dict() if self.media_cache is not None else None
        return figures


class Engine(Protocol):
    """The one way a replica runs a model (see the module's docstring for the contract)."""

    @property
    def capabilities(self) -> EngineCapabilities: ...

    @property
    def stats(self) -> EngineStats: ...

    def submit(self, request: GenerationRequest, sink: RequestSink, stop: threading.Event) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    def health_problem(self) -> str | None:
        """Why this engine can no longer serve (a dead engine process, say), or ``None``: health fails on it."""
        ...

    def prepare_structured_output(self) -> None:
        """Start what structured output needs (the grammar compile server, the closing masks) now, in the caller's
        thread, so that the first request with a ``response_format`` does not pay it; nothing for an engine without
        structured output."""
        ...

    def cached_media(self) -> list[str]:
        """The media identities whose encoding this engine holds, most recently used first (bounded): what the
        affinity router sends their next questions here for (:mod:`deployments.routing.media_affinity`)."""
        ...

    def close(self, timeout_s: float = 60.0) -> None: ...


def describe_engine(capabilities: EngineCapabilities, stats: EngineStats) -> dict[str, Any]:
    """The ``batching`` block of ``/v1/memory``: the engine's mode and batch size, then its stats."""
    return {"mode": capabilities.mode, "max_batch_size": capabilities.max_batch_size, **stats.to_dict()}


def check_options(request: GenerationRequest, vocab_size: int) -> None:
    """What only a replica can check about a request's decoding options, whatever its engine: token ids against its
    vocabulary (:class:`InvalidParameterError`, a 400)."""
    for token, _ in request.options.logit_bias:
        if not 0 <= token < vocab_size:
            raise InvalidParameterError(
                "logit_bias", f"logit_bias names token {token}; this model's token ids are 0 to {vocab_size - 1}"
            )


def first_unhonoured_option(request: GenerationRequest, honoured: frozenset[str]) -> str | None:
    """The first decoding option ``request`` sets (away from its default) that is not in ``honoured``."""
    defaults = DecodingOptions()
    for field in dataclasses.fields(DecodingOptions):
        if field.name not in honoured and getattr(request.options, field.name) != getattr(defaults, field.name):
            return field.name
    return None
