"""The model replica: one class, deployed as the GPU group and as the CPU group.

The constructor never fails because memory is short. It starts a loader
thread and returns at once, so Ray Serve sees a healthy replica and never
counts constructor failures towards ``DEPLOY_FAILED``. The thread loads
through the group's chain; when nothing fits (or no GPU is visible) the
replica waits, measures again every ``load_retry_period_s`` and loads as soon
as the memory is there: another process exiting brings the GPU group back
without a redeploy. Until it is ready, ``generate`` raises
:class:`ReplicaUnavailableError` at once, which the router answers from the
other group. The replica says all of this in ``describe``: state, reason,
load report, budget, memory snapshot, allocator settings.
"""

import asyncio
import collections
import dataclasses
import enum
import logging
import threading
import time
from typing import Any, AsyncIterator, Callable

import torch
from ray import serve
from ray.serve.exceptions import RayServeException

from deployments.autoscaling import FREE_BYTES_METRIC, NEED_BYTES_METRIC, READY_METRIC
from deployments.config import AppConfig, CpuGroupSettings, GpuGroupSettings
from deployments.logs import route_logs_through_serve
from deployments.metrics import ReplicaMetrics
from memory import MemorySnapshot
from memory.allocator import read_allocator_settings
from memory.budget import MemoryBudget, cpu_budget
from memory.cleanup import release_memory
from memory.estimate import RequestShape, activation_reserve_bytes, load_model_config
from memory.gpu import NoGpuVisibleError, limit_to_share, measure_gpu_budget
from memory.plan import estimate_chain
from memory.loader import LoadReport, ModelLoadError, NothingFitsError, is_out_of_memory
from memory.strategy import LoadStrategy
from memory.fault_injection import raise_if_simulated_out_of_memory
from models.adapters import adapter_factory, choose_adapter
from models.base import CheckpointAdapter, GenerationRequest, GenerationResult, TextDelta, VideoPart
from models.loading import load_adapter
from models.request_shrink import RequestSize, ShrinkFloor, request_size, shrink_request
from models.tiny import ensure_tiny_model

logger = logging.getLogger(__name__)

# The CPU group is the last resort: a request reaching a replica that is still loading (scaled up
# from zero, or just started) waits this long for the load instead of failing. The GPU group never
# waits: its caller falls back to the CPU group at once.
_CPU_LOAD_WAIT_S = 300.0
_OOMS_BEFORE_UNHEALTHY = 3
_OOM_WINDOW_S = 60.0

GPU_GROUP = "gpu"
CPU_GROUP = "cpu"
DEPLOYMENT_NAMES = {GPU_GROUP: "gpu_group", CPU_GROUP: "cpu_group"}


class ReplicaState(str, enum.Enum):
    LOADING = "loading"
    WAITING_FOR_MEMORY = "waiting_for_memory"
    READY = "ready"
    FAILED = "failed"


class ReplicaUnavailableError(RuntimeError):
    """This replica has no model to answer with (loading, waiting for memory, or failed)."""


class RequestOutOfMemoryError(RuntimeError):
    """A request ran out of memory on this replica; it was cleaned up, the replica keeps serving."""


@dataclasses.dataclass(frozen=True)
class ServedBy:
    group: str
    replica: str
    precision: str
    device: str


@dataclasses.dataclass(frozen=True)
class OomRetry:
    """One out-of-memory on a request and the smaller request that followed."""

    before: RequestSize
    after: RequestSize
    freed_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"before": self.before.to_dict(), "after": self.after.to_dict(), "freed_bytes": self.freed_bytes}


@dataclasses.dataclass(frozen=True)
class ReplicaAnswer:
    result: GenerationResult
    served_by: ServedBy
    inference_seconds: float
    used: RequestSize  # what the model saw: smaller than asked after out-of-memory retries
    oom_retries: tuple[OomRetry, ...] = ()
    used_timestamps_s: tuple[float, ...] = ()


@dataclasses.dataclass(frozen=True)
class StreamOpened:
    """The first item of a stream: who serves it, what it runs on, and the first piece of text."""

    served_by: ServedBy
    used: RequestSize  # smaller than asked when out-of-memory retries came first
    first: TextDelta | GenerationResult


class StreamOutOfMemoryError(Exception):
    """Out of memory after part of the answer was streamed: too late to retry smaller or elsewhere.

    Not a ``RuntimeError``, so the out-of-memory check (which reads ``RuntimeError`` messages) does not
    take it for a fresh out-of-memory and start the answer again.
    """


def request_shape(config: AppConfig) -> RequestShape:
    """The largest request the limits allow, which sizes the activation reserve."""
    limits = config.limits
    return RequestShape(
        max_frames=limits.max_video_frames,
        max_pixels_per_frame=limits.max_pixels_per_frame,
        max_images=1,
        max_new_tokens=limits.max_tokens,
    )


class ModelReplica:
    """Loads the configured model in the background; answers once loaded."""

    def __init__(self, config: AppConfig, group: str) -> None:
        if _in_serve_replica():
            route_logs_through_serve()
        self._group = group
        self._settings: GpuGroupSettings | CpuGroupSettings = config.gpu_group if group == GPU_GROUP else config.cpu_group
        self._num_threads = max(1, int(self._settings.num_cpus))
        torch.set_num_threads(self._num_threads)
        self._replica_id = _replica_id()
        self._model_path = str(ensure_tiny_model()) if config.model.source == "tiny" else config.model.source
        trust_remote_code = config.model.trust_remote_code
        adapter_name = choose_adapter(self._model_path, config.model.adapter, trust_remote_code=trust_remote_code)
        self._make_adapter = adapter_factory(adapter_name, max_slice_nums=config.model.max_slice_nums)
        self._shrink_floor = ShrinkFloor(
            min_frames=config.request_oom.min_frames, min_pixels_per_frame=config.request_oom.min_pixels_per_frame
        )
        self._streams_cancelled = 0
        self._last_cancelled_stream_tokens: int | None = None
        model_config = load_model_config(self._model_path, trust_remote_code=trust_remote_code)
        self._reserve_bytes = activation_reserve_bytes(model_config, request_shape(config))
        self._chain = self._settings.strategies()
        self._estimates = estimate_chain(model_config, self._chain)
        self._on_cuda = all(strategy.device == "cuda" for strategy in self._chain)
        self._state = ReplicaState.LOADING
        self._reason = "loading"
        self._adapter: CheckpointAdapter | None = None
        self._strategy: LoadStrategy | None = None
        self._load_report: LoadReport | None = None
        self._budget: MemoryBudget | None = None
        self._load_attempts = 0
        self._request_ooms = 0
        self._recent_ooms: collections.deque[float] = collections.deque(maxlen=_OOMS_BEFORE_UNHEALTHY)
        self._allocator = read_allocator_settings()
        self._metrics = ReplicaMetrics(group)
        self._stopping = threading.Event()
        self._first_load_settled = threading.Event()  # set once the first load ends, whatever its outcome
        # One generation at a time: the replica's threads (or its GPU share) are its whole compute.
        self._generate_lock = threading.Lock()
        self._loader = threading.Thread(target=self._load_until_ready, name=f"{group}-loader", daemon=True)
        self._loader.start()

    # -- loading -----------------------------------------------------------------------------

    def _measure_budget(self, strategy: LoadStrategy) -> MemoryBudget:
        if self._group == GPU_GROUP:
            context = self._settings.cuda_context_bytes if self._on_cuda else 0
            self._budget = measure_gpu_budget(
                share=self._settings.num_gpus, context_bytes=context, reserve_bytes=self._reserve_bytes
            )
        else:
            self._budget = cpu_budget(
                MemorySnapshot.measure(), configured_bytes=self._settings.memory_bytes, reserve_bytes=self._reserve_bytes
            )
        return self._budget

    def _load_until_ready(self) -> None:
        if self._on_cuda and torch.cuda.is_available():
            # Ray shares the device but does not isolate its memory: enforce the share here.
            limit_to_share(self._settings.num_gpus)
        while not self._stopping.is_set():
            self._load_attempts += 1
            try:
                loaded = load_adapter(
                    self._model_path,
                    self._chain,
                    measure_budget=self._measure_budget,
                    oom_retries=self._settings.oom_retries,
                    estimates=self._estimates,
                    make_adapter=self._make_adapter,
                )
            except NothingFitsError as error:
                self._load_report = error.report
                self._wait_for_memory(str(error).splitlines()[0] + " " + error.budget.explain())
            except ModelLoadError as error:
                self._load_report = error.report
                self._set_state(ReplicaState.FAILED, str(error))
                return
            except NoGpuVisibleError as error:
                self._wait_for_memory(str(error))
            else:
                self._adapter, self._strategy, self._load_report = loaded.model, loaded.strategy, loaded.report
                self._metrics.set_precision(loaded.strategy.name)
                self._record_attempts(loaded.report)
                self._set_state(ReplicaState.READY, f"loaded as {loaded.strategy.name} on {loaded.strategy.device}")
                return
            self._record_attempts(self._load_report)
            self._stopping.wait(self._settings.load_retry_period_s)

    def _record_attempts(self, report: LoadReport | None) -> None:
        for attempt in report.attempts if report else ():
            self._metrics.record_load_attempt(attempt.strategy, attempt.outcome)

    def _wait_for_memory(self, reason: str) -> None:
        self._set_state(
            ReplicaState.WAITING_FOR_MEMORY, f"{reason}; measuring again every {self._settings.load_retry_period_s:g} s"
        )

    def _set_state(self, state: ReplicaState, reason: str) -> None:
        if (state, reason) != (self._state, self._reason):
            log = logger.warning if state in (ReplicaState.WAITING_FOR_MEMORY, ReplicaState.FAILED) else logger.info
            log("Replica %s of group %s: %s (%s)", self._replica_id, self._group, state.value, reason)
        self._state, self._reason = state, reason
        if state is not ReplicaState.LOADING:
            self._first_load_settled.set()

    # -- serving -----------------------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> ReplicaAnswer:
        """Answer one request; after an out-of-memory, retry it smaller down to the floor, then hand it off."""
        adapter, served_by = self._ready()
        with self._generate_lock:
            self._check_still_loaded(adapter)
            started = time.perf_counter()

            def run(attempt: GenerationRequest) -> GenerationResult:
                raise_if_simulated_out_of_memory(attempt)
                return adapter.generate(attempt)

            result, used, retries = self._shrinking_on_oom(run, request)
            elapsed = time.perf_counter() - started
        return ReplicaAnswer(
            result=result,
            served_by=served_by,
            inference_seconds=elapsed,
            used=request_size(used),
            oom_retries=retries,
            used_timestamps_s=_video_timestamps(used),
        )

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[StreamOpened | TextDelta | GenerationResult]:
        """Stream the answer: :class:`StreamOpened` (once the first text exists), text pieces, then the result.

        Generation runs in a thread and stops at its next token when this generator is closed or
        cancelled (the client went away). Out of memory before the first piece retries smaller, like
        :meth:`generate`; an error before :class:`StreamOpened` leaves the caller free to try the other group.
        """
        adapter, served_by = self._ready()
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        finished = object()

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        def produce() -> None:
            try:
                with self._generate_lock:
                    if stop.is_set():
                        return  # the caller left while this stream waited for the model
                    self._check_still_loaded(adapter)
                    emitted = [False]

                    def run(attempt: GenerationRequest) -> GenerationResult:
                        raise_if_simulated_out_of_memory(attempt)
                        result = None
                        try:
                            for item in adapter.stream(attempt, stop.is_set):
                                put((attempt, item))
                                emitted[0] = True
                                result = item
                        except Exception as error:
                            if emitted[0] and is_out_of_memory(error):
                                raise StreamOutOfMemoryError(f"ran out of memory mid-answer: {error}") from error
                            raise
                        return result

                    result, _, _ = self._shrinking_on_oom(run, request)
                    if stop.is_set() and isinstance(result, GenerationResult):
                        self._last_cancelled_stream_tokens = result.completion_tokens
                        logger.info(
                            "Replica %s: cancelled stream stopped after %d of at most %d tokens",
                            self._replica_id, result.completion_tokens, request.max_new_tokens,
                        )
            except BaseException as error:  # noqa: BLE001 - handed to the consumer
                put(error)
            finally:
                put(finished)

        worker = loop.run_in_executor(None, produce)
        completed = False
        try:
            first = await items.get()
            if isinstance(first, BaseException):
                raise first
            if first is finished:
                raise RuntimeError("The model produced nothing")
            attempt, item = first
            yield StreamOpened(served_by=served_by, used=request_size(attempt), first=item)
            while True:
                got = await items.get()
                if got is finished:
                    break
                if isinstance(got, BaseException):
                    raise got
                yield got[1]
            completed = True
        finally:
            if not completed:
                stop.set()
                if not worker.done():
                    self._streams_cancelled += 1
                    self._metrics.record_stream_cancelled()
                    logger.info("Stream on replica %s stopped: the caller went away", self._replica_id)

    def _ready(self) -> tuple[CheckpointAdapter, ServedBy]:
        if self._group == CPU_GROUP and self._state is ReplicaState.LOADING:
            self._first_load_settled.wait(timeout=_CPU_LOAD_WAIT_S)
        adapter, strategy = self._adapter, self._strategy
        if self._state is not ReplicaState.READY or adapter is None or strategy is None:
            raise ReplicaUnavailableError(f"{self._group} replica {self._replica_id} is {self._state.value}: {self._reason}")
        served_by = ServedBy(group=self._group, replica=self._replica_id, precision=strategy.name, device=strategy.device)
        return adapter, served_by

    def _check_still_loaded(self, adapter: CheckpointAdapter) -> None:
        if adapter.model is None:  # checked under the lock: unload() takes it too
            raise ReplicaUnavailableError(
                f"{self._group} replica {self._replica_id} has no model (unloaded); it is being replaced"
            )

    def _shrinking_on_oom(
        self, run: Callable[[GenerationRequest], GenerationResult], request: GenerationRequest
    ) -> tuple[GenerationResult, GenerationRequest, tuple[OomRetry, ...]]:
        attempt = request
        retries: list[OomRetry] = []
        while True:
            try:
                return run(attempt), attempt, tuple(retries)
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                cause = str(error).splitlines()[0][:200]
            # Outside the except block, so the tensors the traceback holds can be freed.
            freed = release_memory()
            freed_bytes = freed.gpu_reserved_freed_bytes + freed.process_rss_freed_bytes
            self._request_ooms += 1
            self._recent_ooms.append(time.monotonic())
            before = request_size(attempt)
            smaller = shrink_request(attempt, self._shrink_floor)
            if smaller is None:
                self._metrics.record_request_out_of_memory("handed_off")
                logger.warning(
                    "Replica %s (%s group) ran out of memory at %d frames, %d images, %d pixels per frame, the floor "
                    "(%d frames, %d pixels); cleanup freed %d bytes; handing the request to the other group (%s)",
                    self._replica_id, self._group, before.video_frames, before.images, before.max_pixels_per_frame,
                    self._shrink_floor.min_frames, self._shrink_floor.min_pixels_per_frame, freed_bytes, cause,
                )
                raise RequestOutOfMemoryError(
                    f"{self._group} replica {self._replica_id} ran out of memory with {before.video_frames} frames and "
                    f"{before.images} images at {before.max_pixels_per_frame} pixels each, at the floor of "
                    f"{self._shrink_floor.min_frames} frames and {self._shrink_floor.min_pixels_per_frame} pixels, after "
                    f"{len(retries)} smaller retries (cleanup freed {freed_bytes} bytes)"
                )
            after = request_size(smaller)
            self._metrics.record_request_out_of_memory("retry_smaller")
            logger.warning(
                "Replica %s (%s group) ran out of memory at %d frames, %d pixels per frame (cleanup freed %d bytes); "
                "retrying with %d frames, %d pixels per frame (%s)",
                self._replica_id, self._group, before.video_frames, before.max_pixels_per_frame, freed_bytes,
                after.video_frames, after.max_pixels_per_frame, cause,
            )
            retries.append(OomRetry(before=before, after=after, freed_bytes=freed_bytes))
            attempt = smaller

    def describe(self) -> dict[str, Any]:
        snapshot = MemorySnapshot.measure()
        return {
            "group": self._group,
            "replica": self._replica_id,
            "state": self._state.value,
            "reason": self._reason,
            "precision": self._strategy.name if self._strategy else None,
            "load_attempts": self._load_attempts,
            "request_out_of_memory": self._request_ooms,
            "streams_cancelled": self._streams_cancelled,
            "last_cancelled_stream_tokens": self._last_cancelled_stream_tokens,
            "model": self._adapter.describe() if self._adapter else {"model_path": self._model_path, "loaded": False},
            "memory": snapshot.to_dict(),
            "budget": self._budget.to_dict() if self._budget else None,
            "load_report": self._load_report.to_dict() if self._load_report else None,
            "allocator": self._allocator.to_dict(),
        }

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Readiness and headroom for ``deployments.autoscaling.memory_aware_policy``; refreshes the gauges."""
        snapshot = MemorySnapshot.measure()
        self._metrics.record_snapshot(snapshot)
        free = self._headroom_bytes(snapshot)
        loaded = self._load_report.loaded if self._load_report else None
        if loaded is not None and loaded.measured_bytes is not None:
            weights = loaded.measured_bytes
        elif self._load_report and self._load_report.attempts:
            weights = min(attempt.estimate_bytes for attempt in self._load_report.attempts)
        else:
            weights = 0
        return {
            READY_METRIC: 1.0 if self._state is ReplicaState.READY else 0.0,
            FREE_BYTES_METRIC: float(free),
            NEED_BYTES_METRIC: float(weights + self._reserve_bytes),
        }

    def unload(self) -> dict[str, Any]:
        """Let the model go (an operator freeing memory). Health then fails and Serve replaces the replica."""
        with self._generate_lock:
            if self._adapter is not None:
                self._adapter.unload()
            freed = release_memory()
        logger.warning("Replica %s of group %s: model unloaded on request", self._replica_id, self._group)
        return dataclasses.asdict(freed)

    def check_health(self) -> None:
        """Fail only for what a restart mends; waiting for memory is not one of them."""
        if self._state is ReplicaState.READY and (self._adapter is None or self._adapter.model is None):
            raise RuntimeError(f"Replica {self._replica_id}: state is ready but the model is gone")
        if self._on_cuda and self._state is ReplicaState.READY:
            try:
                torch.cuda.synchronize()
            except RuntimeError as error:
                raise RuntimeError(f"Replica {self._replica_id}: CUDA is in an error state: {error}") from error
        floor = self._settings.health_min_headroom_bytes
        recurring = (
            len(self._recent_ooms) == _OOMS_BEFORE_UNHEALTHY
            and time.monotonic() - self._recent_ooms[0] <= _OOM_WINDOW_S
        )
        if floor and recurring:
            headroom = self._headroom_bytes(MemorySnapshot.measure())
            if headroom < floor:
                raise RuntimeError(
                    f"Replica {self._replica_id}: {_OOMS_BEFORE_UNHEALTHY} requests ran out of memory within "
                    f"{_OOM_WINDOW_S:g} s and headroom is {headroom} bytes, under the {floor}-byte floor; restarting"
                )

    def _headroom_bytes(self, snapshot: MemorySnapshot) -> int:
        if self._group == GPU_GROUP:
            return snapshot.gpus[0].free_bytes if snapshot.gpus else 0
        return snapshot.available_bytes

    def close(self) -> None:
        """Stop the loader thread (Serve calls ``__del__`` when it stops a replica)."""
        self._stopping.set()
        if self._loader.is_alive() and self._loader is not threading.current_thread():
            self._loader.join(timeout=30)

    def __del__(self) -> None:
        self.close()


def _video_timestamps(request: GenerationRequest) -> tuple[float, ...]:
    return tuple(
        time_s
        for message in request.messages
        for part in message.content
        if isinstance(part, VideoPart)
        for time_s in part.timestamps_s
    )


def _in_serve_replica() -> bool:
    try:
        serve.get_replica_context()
    except RayServeException:
        return False
    return True


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except RayServeException:
        # Outside a Serve replica (in-process benchmarks) there is no replica context.
        return "local"
