"""The model replica: one class, deployed as the GPU group, the GPU floor replicas and the CPU group.

The constructor never fails because memory is short: :class:`~deployments.replica_loader.ReplicaLoader`
loads in a thread and waits for memory when nothing fits, so Ray Serve never counts constructor
failures towards ``DEPLOY_FAILED``. Once loaded, a :class:`~models.scheduler.BatchScheduler` owns
the model: concurrent requests share its decode steps and are admitted by predicted memory.

``generate_stream`` is the one serving method (see :mod:`deployments.replica_protocol` for what
it yields); ``generate`` collects it for in-process callers. Until the replica is ready both raise
:class:`ReplicaUnavailableError` at once, which the router answers from the other group. The
replica says all of this in ``describe``: state, reason, load report, budget, memory, batch.
"""

import asyncio
import collections
import dataclasses
import logging
import time
from typing import Any, AsyncIterator

import ray
import torch
from ray import serve
from ray.serve.exceptions import RayServeException

from deployments.autoscaling import FREE_BYTES_METRIC, NEED_BYTES_METRIC, READY_METRIC
from deployments.config import AppConfig, CpuGroupSettings, GpuGroupSettings
from deployments.replica_inputs import model_path, request_shape, weight_cache
from deployments.logs import route_logs_through_serve
from deployments.metrics import ReplicaMetrics
from deployments.replica_loader import ReplicaLoader, ReplicaState
from deployments.ready_replica_router import READY_STAT
from deployments.replica_protocol import (
    CPU_GROUP,
    DEPLOYMENT_NAMES,
    GPU_GROUP,
    GPU_GROUPS,
    Accepted,
    ReplicaAnswer,
    ReplicaUnavailableError,
    ServedBy,
    StreamOpened,
)
from deployments.stream_bridge import Opened, StreamBridge
from memory import MemorySnapshot
from memory.admission import RequestCostModel
from memory.allocator import read_allocator_settings
from memory.cleanup import release_memory
from memory.estimate import activation_reserve_bytes, load_model_config
from memory.plan import estimate_chain
from memory.strategy import LoadStrategy
from models.adapters import adapter_factory, choose_adapter
from models.base import CheckpointAdapter, GenerationRequest, GenerationResult, TextDelta, VideoPart
from models.errors import RequestOutOfMemoryError, StreamOutOfMemoryError
from models.request_shrink import ShrinkFloor, request_size
from models.scheduler import BatchLimits, BatchScheduler
from models.serial_scheduler import SerialScheduler

logger = logging.getLogger(__name__)

# The CPU group is the last resort: a request reaching a replica that is still loading (scaled up
# from zero, or just started) waits this long for the load instead of failing. The GPU group never
# waits: its caller falls back to the CPU group at once.
_CPU_LOAD_WAIT_S = 300.0
_OOMS_BEFORE_UNHEALTHY = 3
_OOM_WINDOW_S = 60.0

__all__ = [
    "CPU_GROUP",
    "DEPLOYMENT_NAMES",
    "GPU_GROUP",
    "ModelReplica",
    "ReplicaAnswer",
    "ReplicaUnavailableError",
    "RequestOutOfMemoryError",
    "StreamOpened",
    "StreamOutOfMemoryError",
]


class ModelReplica:
    """Loads the configured model in the background; answers once loaded, many requests at a time."""

    def __init__(self, config: AppConfig, group: str) -> None:
        if _in_serve_replica():
            route_logs_through_serve()
        self._group = group
        self._settings: GpuGroupSettings | CpuGroupSettings = config.group_settings(group)
        torch.set_num_threads(max(1, int(self._settings.num_cpus)))
        self._replica_id = _replica_id()
        self._model_path = model_path(config)
        trust_remote_code = config.model.trust_remote_code
        adapter_name = choose_adapter(self._model_path, config.model.adapter, trust_remote_code=trust_remote_code)
        self._shrink_floor = ShrinkFloor(
            min_frames=config.request_oom.min_frames, min_pixels_per_frame=config.request_oom.min_pixels_per_frame
        )
        self._streams_cancelled = 0
        self._request_ooms = 0
        self._recent_ooms: collections.deque[float] = collections.deque(maxlen=_OOMS_BEFORE_UNHEALTHY)
        self._allocator = read_allocator_settings()
        self._metrics = ReplicaMetrics(group)
        self._scheduler: BatchScheduler | SerialScheduler | None = None
        model_config = load_model_config(self._model_path, trust_remote_code=trust_remote_code)
        self._model_config = model_config
        self._reserve_bytes = activation_reserve_bytes(model_config, request_shape(config))
        chain = self._settings.strategies()
        self._loader = ReplicaLoader(
            group=group,
            replica_id=self._replica_id,
            model_path=self._model_path,
            settings=self._settings,
            chain=chain,
            estimates=estimate_chain(model_config, chain),
            reserve_bytes=self._reserve_bytes,
            make_adapter=adapter_factory(
                adapter_name, max_slice_nums=config.model.max_slice_nums, weight_cache=weight_cache(config)
            ),
            metrics=self._metrics,
            on_ready=self._start_scheduler,
        )
        self._loader.start()

    # -- once loaded: the scheduler ------------------------------------------------------------

    def _start_scheduler(self, adapter: CheckpointAdapter, strategy: LoadStrategy) -> None:
        headroom = self._request_headroom_bytes()
        if not hasattr(adapter, "batch_engine"):
            # Adapters with their own generate loop (MiniCPM-V 2.6's model.chat) run one request at a time.
            self._scheduler = SerialScheduler(adapter, max_waiting=self._settings.max_ongoing_requests)
            return
        engine = adapter.batch_engine()
        costs = RequestCostModel.from_config(self._model_config, dtype_bytes=engine.kv_dtype_bytes, device=strategy.device)
        limits = BatchLimits(
            max_batch_size=self._settings.max_batch_size,
            max_waiting=self._settings.max_ongoing_requests,
            headroom_bytes=headroom,
            max_prefill_tokens=self._settings.max_prefill_tokens,
        )
        self._scheduler = BatchScheduler(
            engine, costs, limits, shrink_floor=self._shrink_floor, on_out_of_memory=self._record_request_oom,
            name=f"{self._group}-scheduler",
        )
        logger.info(
            "Replica %s of group %s: batches of up to %d rows, %d bytes of headroom for requests (%s)",
            self._replica_id, self._group, limits.max_batch_size, headroom, strategy.name,
        )

    def _request_headroom_bytes(self) -> int:
        """The budget measured at load, less the weights measured after it: what requests may use together."""
        budget = self._loader.budget
        if budget is None:
            return 0
        return max(0, budget.weights_bytes + budget.reserve_bytes - self._loader.weights_bytes())

    def _record_request_oom(self, outcome: str) -> None:
        self._request_ooms += 1
        self._recent_ooms.append(time.monotonic())
        self._metrics.record_request_out_of_memory(outcome)

    # -- serving -------------------------------------------------------------------------------

    async def generate_stream(
        self, request: GenerationRequest, stream_text: bool = True
    ) -> AsyncIterator[Accepted | StreamOpened | TextDelta | ReplicaAnswer]:
        """:class:`Accepted` at once, :class:`StreamOpened` once admitted, text pieces, then the :class:`ReplicaAnswer`.

        The request stops at the next decode step when this generator is closed or cancelled (the
        client went away, or the router gave up on it).
        """
        yield Accepted(group=self._group, replica=self._replica_id)
        if self._group == CPU_GROUP and self._loader.state is ReplicaState.LOADING:
            await asyncio.to_thread(self._loader.first_load_settled.wait, _CPU_LOAD_WAIT_S)
        scheduler, served_by = self._ready()
        bridge = StreamBridge(asyncio.get_running_loop())
        queued_at = time.perf_counter()
        completed = False
        try:
            await asyncio.to_thread(scheduler.submit, request, bridge, bridge.stop)
            opened = await bridge.next()
            if not isinstance(opened, Opened):
                raise RuntimeError(f"The scheduler sent {type(opened).__name__} before the request was admitted")
            started = time.perf_counter()
            yield StreamOpened(
                served_by=served_by,
                used=request_size(opened.used),
                predicted_bytes=opened.cost.total_bytes,
                prompt_tokens=opened.prompt_tokens,
            )
            while True:
                item = await bridge.next()
                if isinstance(item, GenerationResult):
                    break
                if stream_text:
                    yield item
            completed = True
            yield ReplicaAnswer(
                result=item,
                served_by=served_by,
                inference_seconds=time.perf_counter() - started,
                used=request_size(opened.used),
                oom_retries=opened.retries,
                used_timestamps_s=_video_timestamps(opened.used),
                queued_seconds=started - queued_at,
                predicted_bytes=opened.cost.total_bytes,
            )
        except (GeneratorExit, asyncio.CancelledError):
            # The caller closed or cancelled the stream before its answer (client gone, router gave up).
            if not completed:
                bridge.stop.set()
                self._streams_cancelled += 1
                self._metrics.record_stream_cancelled()
                logger.info("Request on replica %s stopped before its end: the caller went away", self._replica_id)
            raise
        finally:
            if not completed:
                bridge.stop.set()  # whatever ended it early, the scheduler drops the request

    async def generate(self, request: GenerationRequest) -> ReplicaAnswer:
        """The whole answer (for in-process callers and benchmarks; the router uses ``generate_stream``)."""
        async for item in self.generate_stream(request, stream_text=False):
            if isinstance(item, ReplicaAnswer):
                return item
        raise RuntimeError("The replica's stream ended without an answer")

    def _ready(self) -> tuple[BatchScheduler | SerialScheduler, ServedBy]:
        loader, scheduler = self._loader, self._scheduler
        strategy = loader.strategy
        if loader.state is not ReplicaState.READY:
            raise ReplicaUnavailableError(f"{self._group} replica {self._replica_id} is {loader.state.value}: {loader.reason}")
        if scheduler is None or strategy is None:
            raise ReplicaUnavailableError(
                f"{self._group} replica {self._replica_id} has no model to answer with (unloaded; Serve replaces it)"
            )
        served_by = ServedBy(group=self._group, replica=self._replica_id, precision=strategy.name, device=strategy.device)
        return scheduler, served_by

    # -- what the replica says about itself ----------------------------------------------------

    def describe(self) -> dict[str, Any]:
        snapshot = MemorySnapshot.measure()
        loader, scheduler = self._loader, self._scheduler
        adapter = loader.adapter
        return {
            "group": self._group,
            "replica": self._replica_id,
            "node_ip": ray.util.get_node_ip_address(),
            "gpu_share": self._settings.num_gpus if self._group in GPU_GROUPS else None,
            "state": loader.state.value,
            "reason": loader.reason,
            "precision": loader.strategy.name if loader.strategy else None,
            "load_attempts": loader.load_attempts,
            "request_out_of_memory": self._request_ooms,
            "streams_cancelled": self._streams_cancelled,
            "last_cancelled_stream_tokens": scheduler.stats.last_cancelled_tokens if scheduler else None,
            "batching": self._batching_description(),
            "model": adapter.describe() if adapter else {"model_path": self._model_path, "loaded": False},
            "memory": snapshot.to_dict(),
            "budget": loader.budget.to_dict() if loader.budget else None,
            "load_report": loader.load_report.to_dict() if loader.load_report else None,
            "allocator": self._allocator.to_dict(),
        }

    def _batching_description(self) -> dict[str, Any] | None:
        scheduler = self._scheduler
        if scheduler is None:
            return None
        return {
            "mode": "continuous" if isinstance(scheduler, BatchScheduler) else "serial",
            "max_batch_size": self._settings.max_batch_size if isinstance(scheduler, BatchScheduler) else 1,
            **scheduler.stats.to_dict(),
        }

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Readiness and headroom for ``deployments.autoscaling.memory_aware_policy``; refreshes the gauges."""
        snapshot = MemorySnapshot.measure()
        self._metrics.record_snapshot(snapshot)
        if self._scheduler is not None:
            self._metrics.record_batch(self._scheduler.stats)
        return {
            READY_METRIC: 1.0 if self._loader.state is ReplicaState.READY else 0.0,
            FREE_BYTES_METRIC: float(self._headroom_bytes(snapshot)),
            NEED_BYTES_METRIC: float(self._loader.weights_bytes() + self._reserve_bytes),
        }

    def record_routing_stats(self) -> dict[str, bool]:
        """For :class:`~deployments.ready_replica_router.ReadyReplicaRouter`: calls go to loaded replicas first."""
        return {READY_STAT: self._loader.state is ReplicaState.READY and self._scheduler is not None}

    async def ping(self, wait_ready_s: float = 0.0) -> dict[str, str]:
        """Who answered, once this replica can serve (waiting up to ``wait_ready_s`` for its first load);
        :class:`ReplicaUnavailableError` when it cannot. The group router's breaker probe, and how it wakes the
        floor replicas from zero, without a client's request."""
        if wait_ready_s > 0 and self._loader.state is ReplicaState.LOADING:
            await asyncio.to_thread(self._loader.first_load_settled.wait, wait_ready_s)
        _, served_by = self._ready()
        return {"group": served_by.group, "replica": served_by.replica, "precision": served_by.precision}

    def unload(self) -> dict[str, Any]:
        """Let the model go (an operator freeing memory). Health then fails and Serve replaces the replica."""
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.close()
        if self._loader.adapter is not None:
            self._loader.adapter.unload()
        freed = release_memory()
        logger.warning("Replica %s of group %s: model unloaded on request", self._replica_id, self._group)
        return dataclasses.asdict(freed)

    def check_health(self) -> None:
        """Fail only for what a restart mends; waiting for memory is not one of them."""
        loader = self._loader
        if loader.state is ReplicaState.FAILED:
            raise RuntimeError(f"Replica {self._replica_id}: {loader.reason}")
        if loader.state is ReplicaState.READY and (loader.adapter is None or loader.adapter.model is None):
            raise RuntimeError(f"Replica {self._replica_id}: state is ready but the model is gone")
        if loader.on_cuda and loader.state is ReplicaState.READY:
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
        if self._group in GPU_GROUPS:
            return snapshot.gpus[0].free_bytes if snapshot.gpus else 0
        return snapshot.available_bytes

    def close(self) -> None:
        """Stop the loader thread and the scheduler (Serve calls ``__del__`` when it stops a replica)."""
        self._loader.close()
        if self._scheduler is not None:
            self._scheduler.close()

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
