"""One request at a time, for adapters that run their own generate loop (MiniCPM-V 2.6's ``model.chat``).

An :class:`~models.engines.contract.Engine` like :class:`models.engines.transformers.scheduler.BatchScheduler`, so the replica
serves both the same way. It declares no decoding option (``capabilities``): a request that sets one
is refused by name. Requests queue (bounded) and run in arrival order through
the adapter's ``stream``. An out-of-memory hands the request off (no smaller retry: the
adapter's own loop gives no place to shrink it between steps).
"""

import collections
import dataclasses
import logging
import threading
from typing import Any

from memory.admission import RequestCost
from memory.cleanup import release_memory
from memory.out_of_memory import is_out_of_memory
from models.adapters.base import CheckpointAdapter
from models.engines.contract import (
    EngineCapabilities,
    EngineStats,
    GuardedSink,
    RequestSink,
    describe_engine,
    first_unhonoured_option,
)
from models.errors import (
    InvalidParameterError,
    ReplicaBusyError,
    RequestOutOfMemoryError,
    SchedulerClosedError,
    StreamOutOfMemoryError,
)
from models.requests import GenerationRequest, GenerationResult, TextDelta

logger = logging.getLogger(__name__)

_UNPRICED = RequestCost(kv_cache_bytes=0, vision_bytes=0, prefill_bytes=0)


@dataclasses.dataclass
class _QueuedRequest:
    request: GenerationRequest
    sink: RequestSink
    stop: threading.Event


class SerialScheduler:
    capabilities = EngineCapabilities(mode="serial", max_batch_size=1, decoding_options=frozenset())

    def __init__(self, adapter: CheckpointAdapter, *, max_waiting: int) -> None:
        self._adapter = adapter
        self._max_waiting = max_waiting
        self._jobs: collections.deque[_QueuedRequest] = collections.deque()
        self._wake = threading.Condition()
        self._closing = False
        self.stats = EngineStats()
        self._thread = threading.Thread(target=self._run, name="serial-scheduler", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest, sink: RequestSink, stop: threading.Event) -> None:
        sink = GuardedSink(sink, stop)  # a caller that goes away ends its request, not this engine
        unhonoured = first_unhonoured_option(request, self.capabilities.decoding_options)
        if unhonoured is not None:
            raise InvalidParameterError(
                unhonoured,
                "This model's adapter runs its own generate loop, which takes only max_tokens, temperature and seed; "
                "stop, logprobs, response_format, top_p, top_k, min_p, penalties, logit_bias, min_tokens and "
                "ignore_eos need a model served with continuous batching",
            )
        with self._wake:
            if self._closing:
                raise SchedulerClosedError("This replica stopped taking requests (its model is being unloaded)")
            if len(self._jobs) >= self._max_waiting:
                raise ReplicaBusyError(f"{len(self._jobs)} requests are waiting on this replica (limit {self._max_waiting})")
            # Behind every queued request of the same or a lower priority value (interactive first).
            position = next((i for i, job in enumerate(self._jobs) if job.request.priority > request.priority), len(self._jobs))
            self._jobs.insert(position, _QueuedRequest(request, sink, stop))
            self.stats.waiting = len(self._jobs)
            self._wake.notify()

    def cached_media(self) -> list[str]:
        return []  # the adapter's own generate loop runs its vision tower every time

    def describe(self) -> dict[str, Any]:
        return describe_engine(self.capabilities, self.stats)

    def prepare_structured_output(self) -> None:
        """Nothing: this engine honours no ``response_format`` (it is refused by name)."""

    def health_problem(self) -> str | None:
        if not self._closing and not self._thread.is_alive():
            return f"The engine's thread {self._thread.name!r} ended while the replica serves"
        return None

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop taking requests: queued ones fail with :class:`SchedulerClosedError`; the running one finishes."""
        with self._wake:
            self._closing = True
            jobs, self._jobs = list(self._jobs), collections.deque()
            self._wake.notify()
        for job in jobs:
            job.sink.failed(SchedulerClosedError("This replica stopped taking requests before this one started"))
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closing and not self._jobs:
                    self._wake.wait()
                if self._closing:
                    return
                job = self._jobs.popleft()
                self.stats.waiting = len(self._jobs)
            if job.stop.is_set():
                self.stats.cancelled += 1
                continue
            self.stats.running = 1
            self._serve(job)
            self.stats.running = 0
            self.stats.steps += 1

    def _serve(self, job: _QueuedRequest) -> None:
        sent = False
        try:
            job.sink.opened(job.request, (), _UNPRICED)
            for item in self._adapter.stream(job.request, job.stop.is_set):
                if isinstance(item, TextDelta):
                    sent = True
                    job.sink.text(item)
                elif isinstance(item, GenerationResult):
                    job.sink.finished(item)
            return
        except Exception as error:  # noqa: BLE001 - reported to the request's caller
            if not is_out_of_memory(error):
                job.sink.failed(error)
                return
            cause = str(error).splitlines()[0][:200]
        release_memory()
        self.stats.request_ooms += 1
        error_type = StreamOutOfMemoryError if sent else RequestOutOfMemoryError
        job.sink.failed(error_type(f"ran out of memory: {cause}"))

