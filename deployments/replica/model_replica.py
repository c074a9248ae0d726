"""The model replica: one class, deployed as the GPU group, the GPU floor replicas and the CPU group.

The constructor never fails because memory is short: :class:`~deployments.replica.loader.ReplicaLoader`
loads in a thread and waits for memory when nothing fits, so Ray Serve never counts constructor
failures towards ``DEPLOY_FAILED``. Once loaded, an engine (:mod:`models.engines.contract`, the only thing the
replica knows of how a model runs) owns the model: with continuous batching, concurrent requests share
its decode steps and are admitted by predicted memory. The replica's state is a
:class:`~deployments.replica.lifecycle.ReplicaLifecycle`; every reader asks its ``is_serving``.

``generate_stream`` is the one serving method (see :mod:`deployments.replica.protocol` for what
it yields); ``generate`` collects it for in-process callers. Until the replica is ready both raise
:class:`ReplicaUnavailableError` at once, which the router answers from the other group. The
replica says all of this in ``describe``: state, reason, load report, budget, memory, batch.
"""

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from typing import Any, AsyncIterator

import ray
import torch
from ray import serve
from ray.serve.exceptions import RayServeException

from deployments.config.groups import CpuGroupSettings, GpuGroupSettings
from deployments.observability.logs import route_logs_through_serve
from deployments.observability.metrics import ReplicaMetrics
from deployments.plan import AppPlan, checkpoint_on_this_node
from deployments.replica.background import BACKGROUND_THREADS
from deployments.replica.engine_chain import engine_chain
from deployments.replica.lifecycle import FINAL_STATES, ReplicaLifecycle, ReplicaState
from deployments.replica.loader import ReplicaLoader
from deployments.replica.protocol import ReplicaAnswer, ReplicaUnavailableError, ServedBy, StreamOpened
from deployments.replica.stream_bridge import Opened, StreamBridge
from deployments.routing.autoscaling import FREE_BYTES_METRIC, NEED_BYTES_METRIC, READY_METRIC
from deployments.routing.ready_replica_router import MEDIA_STAT, READY_STAT
from memory.allocator import read_allocator_settings
from memory.cleanup import release_memory
from memory.estimate import load_model_config
from memory.probe import MemorySnapshot
from memory.strategy import LoadStrategy
from models.adapters.base import CheckpointAdapter
from models.decoding.grammar_server import SchemaCompileLimits, start_server_early, stop_early_server
from models.engines.contract import Engine
from models.engines.spec import LinkContext
from models.engines.start import EngineSettings, start_engine
from models.engines.warm_up import run_warm_up
from models.media.request_shrink import ShrinkMinimum, request_size
from models.requests import GenerationRequest, GenerationResult, TextDelta, VideoPart

logger = logging.getLogger(__name__)

_OOMS_BEFORE_UNHEALTHY = 3
_OOM_WINDOW_S = 60.0


class ModelReplica:
    """Loads the configured model in the background; answers once loaded, many requests at a time."""

    def __init__(self, plan: AppPlan, group: str) -> None:
        self._loader: ReplicaLoader | None = None  # first: close() runs even when this constructor fails half-way
        self._engine: Engine | None = None
        self._warm_engine: Engine | None = None  # the loaded link's engine, between its warm-up and serving
        self._engine_lock = threading.Lock()  # orders the engine's start (loader thread) against unload()
        if _in_serve_replica():
            route_logs_through_serve()
        self._group = group
        group_plan = plan.group(group)
        config = plan.config
        self._settings: GpuGroupSettings | CpuGroupSettings = group_plan.settings
        self._on_gpu_share = group_plan.on_gpu_share
        # How long a request that reaches this replica while it loads waits for the load (GroupPlan.waits_for_load).
        self._load_wait_s = config.routing.cpu_timeout_s if group_plan.waits_for_load else 0.0
        self._prepare_structured = config.jobs.enabled  # every job segment asks for JSON
        torch.set_num_threads(max(1, int(self._settings.num_cpus)))
        self._replica_id = _replica_id()
        self._lifecycle = ReplicaLifecycle(f"Replica {self._replica_id} of group {group}")
        # This node's folder: the plan's was made on the node that built the app, and nodes share no filesystem.
        self._model_path = checkpoint_on_this_node(config, metadata_only=True)
        trust_remote_code = config.model.trust_remote_code
        self._shrink_minimum = ShrinkMinimum(
            min_frames=config.request_oom.min_frames, min_pixels_per_frame=config.request_oom.min_pixels_per_frame
        )
        self._schema_compile = SchemaCompileLimits(
            time_limit_s=config.limits.max_schema_compile_s, max_in_flight=config.limits.max_schema_compiles,
            memory_bytes=config.limits.max_schema_compile_bytes,
        )
        self._streams_cancelled = 0
        self._request_ooms = 0
        self._recent_ooms: collections.deque[float] = collections.deque(maxlen=_OOMS_BEFORE_UNHEALTHY)
        self._allocator = read_allocator_settings()
        self._metrics = ReplicaMetrics(group)
        model_config = load_model_config(self._model_path, trust_remote_code=trust_remote_code)
        self._model_config = model_config
        self._reserve_bytes = group_plan.reserve_bytes  # the largest request the limits allow, priced by admission's model
        engines = engine_chain(self._model_path, LinkContext(
            model_config=model_config,
            settings=self._settings,
            max_model_len=plan.max_model_len,
            largest_request=plan.largest_request,
            max_media_parts=config.limits.max_media_parts,
            trust_remote_code=trust_remote_code,
            adapter_family=plan.adapter,
            max_slice_nums=config.model.max_slice_nums,
            weight_cache=plan.weight_cache(),
            share=group_plan.num_gpus if group_plan.on_gpu_share else 1.0,
            budget=lambda: self._loader.budget,
            max_video_frames=config.limits.max_video_frames,
            max_pixels_per_frame=config.limits.max_pixels_per_frame,
        ))
        self._engine_choice = engines.choice
        logger.info("Replica %s of group %s runs %s: %s", self._replica_id, group, engines.choice.engine,
                    engines.choice.reason)
        self._loader = ReplicaLoader(
            group=group,
            replica_id=self._replica_id,
            fetch_checkpoint=lambda: checkpoint_on_this_node(config),
            settings=self._settings,
            chain=engines.chain,
            estimates=engines.estimates,
            reserve_bytes=self._reserve_bytes,
            link_reserves=engines.reserves,
            make_adapter=engines.make_adapter,
            metrics=self._metrics,
            lifecycle=self._lifecycle,
            warm_up=self._start_and_warm_up,
            on_loaded=self._start_engine,
        )
        if self._prepare_structured:
            start_server_early()  # its import of xgrammar runs beside the load; the replica is ready once it answers
        self._loader.start()

    # -- once loaded: the engine ---------------------------------------------------------------

    def _start_and_warm_up(self, adapter: CheckpointAdapter, strategy: LoadStrategy) -> None:
        """In the loader thread, once a link loaded: start its engine and send it a real request
        (:mod:`models.engines.warm_up`). What that raises makes the link unusable (or out of memory), and the chain goes on."""
        settings = EngineSettings(
            max_batch_size=self._settings.max_batch_size,
            max_waiting=self._settings.max_ongoing_requests,
            headroom_bytes=self._request_headroom_bytes(adapter),
            max_prefill_tokens=self._settings.max_prefill_tokens,
            shrink_minimum=self._shrink_minimum,
            schema_compile=self._schema_compile,
            name=f"{self._group}-engine",
            media_cache_bytes=self._settings.media_cache_bytes,
        )
        engine = start_engine(adapter, strategy, self._model_config, settings, on_out_of_memory=self._record_request_oom)
        started = time.perf_counter()
        try:
            result = run_warm_up(
                engine, with_image=_takes_images(self._model_config), timeout_s=self._settings.warm_up_timeout_s
            )
        except BaseException:
            engine.close(timeout_s=5.0)
            raise
        self._warm_engine = engine
        logger.info(
            "Replica %s of group %s: %s warmed up in %.2f s (%d prompt tokens, %d generated); %s engine, up to %d "
            "requests a step, %d bytes of headroom for requests", self._replica_id, self._group, strategy.name,
            time.perf_counter() - started, result.prompt_tokens, result.completion_tokens, engine.capabilities.mode,
            engine.capabilities.max_batch_size, settings.headroom_bytes,
        )
        if self._prepare_structured:
            self._prepare_structured_output(engine)

    def _start_engine(self, adapter: CheckpointAdapter, strategy: LoadStrategy) -> None:
        """In the loader thread, once a link loaded and warmed up: serve with its engine, unless unloaded meanwhile."""
        engine, self._warm_engine = self._warm_engine, None
        with self._engine_lock:
            if self._lifecycle.state in FINAL_STATES:
                if engine is not None:
                    engine.close(timeout_s=5.0)
                adapter.unload()
                return
            self._engine = engine
            self._lifecycle.move(ReplicaState.READY, f"loaded as {strategy.name} on {strategy.device}, warmed up")

    def _prepare_structured_output(self, engine: Engine) -> None:
        """Before the replica is ready, when jobs are on: every job segment asks for JSON, so a ready replica has its
        compile server up (started early, beside the load) and ``json_object`` compiled. A failure here is logged, not
        fatal: the first request that asks for structured output tries again."""
        started = time.perf_counter()
        try:
            engine.prepare_structured_output()
        except Exception as error:  # noqa: BLE001 - the first request that asks for structured output tries again
            logger.warning("Preparing structured output failed: %s; the first request that asks for it starts it", error)
            return
        finally:
            stop_early_server()  # not taken: this engine compiles no grammar
        logger.info("Structured output ready on replica %s %.2f s after its warm-up", self._replica_id,
                    time.perf_counter() - started)

    def _request_headroom_bytes(self, adapter: CheckpointAdapter) -> int:
        """The budget measured at load, less the weights measured after it: what requests may use together."""
        budget = self._loader.budget
        if budget is None:
            return 0
        return max(0, budget.weights_bytes + budget.reserve_bytes - adapter.loaded_bytes())

    def _record_request_oom(self, outcome: str) -> None:
        self._request_ooms += 1
        self._recent_ooms.append(time.monotonic())
        self._metrics.record_request_out_of_memory(outcome)

    # -- serving -------------------------------------------------------------------------------

    async def generate_stream(
        self, request: GenerationRequest, stream_text: bool = True
    ) -> AsyncIterator[StreamOpened | TextDelta | ReplicaAnswer]:
        """:class:`StreamOpened` once admitted, text pieces, then the :class:`ReplicaAnswer`.

        The request stops at the next decode step when this generator is closed or cancelled (the
        client went away, or the router gave up on it).
        """
        if self._load_wait_s and self._lifecycle.state is ReplicaState.LOADING:  # scaled up from zero, or just started
            await asyncio.to_thread(self._lifecycle.first_load_settled.wait, self._load_wait_s)
        engine, served_by = self._ready()
        bridge = StreamBridge(asyncio.get_running_loop(), streams_text=stream_text)
        queued_at = time.perf_counter()
        completed = False
        try:
            if request.priority > 0:  # a job's segment: prepared at a lower CPU priority
                await asyncio.get_running_loop().run_in_executor(
                    BACKGROUND_THREADS, engine.submit, request, bridge, bridge.stop
                )
            else:
                await asyncio.to_thread(engine.submit, request, bridge, bridge.stop)
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

    def _ready(self) -> tuple[Engine, ServedBy]:
        lifecycle, engine, strategy = self._lifecycle, self._engine, self._loader.strategy
        if not lifecycle.is_serving or engine is None or strategy is None:
            raise ReplicaUnavailableError(
                f"{self._group} replica {self._replica_id} is {lifecycle.state.value}: {lifecycle.reason}"
            )
        served_by = ServedBy(group=self._group, replica=self._replica_id, precision=strategy.name, device=strategy.device)
        return engine, served_by

    # -- what the replica says about itself ----------------------------------------------------

    def describe(self) -> dict[str, Any]:
        snapshot = MemorySnapshot.measure()
        loader, engine, lifecycle = self._loader, self._engine, self._lifecycle
        serving = lifecycle.is_serving
        adapter = loader.adapter if serving else None
        return {
            "group": self._group,
            "replica": self._replica_id,
            "node_ip": ray.util.get_node_ip_address(),
            "gpu_share": self._settings.num_gpus if self._on_gpu_share else None,
            "state": lifecycle.state.value,
            "reason": lifecycle.reason,
            "serving": serving,
            "precision": loader.strategy.name if serving and loader.strategy else None,
            "engine": {**self._engine_choice.to_dict(), "running": loader.strategy.engine if serving and loader.strategy else None},
            "load_attempts": loader.load_attempts,
            "request_out_of_memory": self._request_ooms,
            "streams_cancelled": self._streams_cancelled,
            "last_cancelled_stream_tokens": engine.stats.last_cancelled_tokens if engine else None,
            "batching": engine.describe() if serving and engine else None,
            # The media identities held encoded, most recent first: what the affinity router sends here.
            "cached_media": engine.cached_media() if serving and engine else [],
            "model": adapter.describe() if adapter else {"model_path": loader.model_path or self._model_path, "loaded": False},
            "memory": snapshot.to_dict(),
            "budget": loader.budget.to_dict() if loader.budget else None,
            "load_report": loader.load_report.to_dict() if loader.load_report else None,
            "allocator": self._allocator.to_dict(),
        }

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Readiness and headroom for ``deployments.routing.autoscaling.memory_aware_policy``; refreshes the gauges."""
        snapshot = MemorySnapshot.measure()
        self._metrics.record_snapshot(snapshot)
        if self._engine is not None:
            self._metrics.record_batch(self._engine.stats)
        return {
            READY_METRIC: 1.0 if self._lifecycle.is_serving else 0.0,
            FREE_BYTES_METRIC: float(self._headroom_bytes(snapshot)),
            NEED_BYTES_METRIC: float(self._loader.weights_bytes() + self._reserve_bytes),
        }

    def record_routing_stats(self) -> dict[str, Any]:
        """For :class:`~deployments.routing.ready_replica_router.ReadyReplicaRouter`: calls go to loaded replicas first,
        and a media's questions to the replica that holds it encoded."""
        engine = self._engine if self._lifecycle.is_serving else None
        return {READY_STAT: self._lifecycle.is_serving, MEDIA_STAT: engine.cached_media() if engine is not None else []}

    async def ping(self, wait_ready_s: float = 0.0) -> dict[str, str]:
        """Who answered, once this replica can serve (waiting up to ``wait_ready_s`` for its first load);
        :class:`ReplicaUnavailableError` when it cannot. The group router's breaker probe, and how it wakes the
        floor replicas from zero, without a client's request."""
        if wait_ready_s > 0 and self._lifecycle.state is ReplicaState.LOADING:
            await asyncio.to_thread(self._lifecycle.first_load_settled.wait, wait_ready_s)
        _, served_by = self._ready()
        return {"group": served_by.group, "replica": served_by.replica, "precision": served_by.precision}

    def unload(self) -> dict[str, Any]:
        """Let the model go (an operator freeing memory): ``unloaded`` everywhere at once, health fails, Serve
        replaces the replica."""
        with self._engine_lock:
            self._lifecycle.try_move(ReplicaState.UNLOADED, "the model was unloaded on request; Serve replaces this replica")
            engine, self._engine = self._engine, None
        self._loader.stop()  # not joined: a load under way would hold this call; _start_engine discards its result
        if engine is not None:
            engine.close()
        if self._loader.adapter is not None:
            self._loader.adapter.unload()
        freed = release_memory()
        logger.warning("Replica %s of group %s: model unloaded on request", self._replica_id, self._group)
        return dataclasses.asdict(freed)

    def check_health(self) -> None:
        """Fail only for what a restart mends; waiting for memory is not one of them."""
        lifecycle, loader = self._lifecycle, self._loader
        if lifecycle.state is ReplicaState.FAILED:
            raise RuntimeError(f"Replica {self._replica_id}: {lifecycle.reason}")
        if lifecycle.state is ReplicaState.UNLOADED:
            raise RuntimeError(f"Replica {self._replica_id} is unloaded: the model is gone ({lifecycle.reason})")
        if lifecycle.is_serving and (loader.adapter is None or not loader.adapter.is_loaded):
            raise RuntimeError(f"Replica {self._replica_id}: state is ready but the model is gone")
        problem = self._engine.health_problem() if lifecycle.is_serving and self._engine is not None else None
        if problem:
            raise RuntimeError(f"Replica {self._replica_id}: {problem}")
        if loader.on_cuda and lifecycle.is_serving:
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
        if self._on_gpu_share:
            return snapshot.gpus[0].free_bytes if snapshot.gpus else 0
        return snapshot.available_bytes

    def close(self) -> None:
        """Stop the loader thread and the engine (Serve calls ``__del__`` when it stops a replica). Safe on a replica
        whose constructor failed half-way: what was never made is not stopped."""
        loader, engine = getattr(self, "_loader", None), getattr(self, "_engine", None)
        stop_early_server()
        if loader is not None:
            loader.close()
        if engine is not None:
            engine.close()
        if loader is not None and loader.adapter is not None:
            loader.adapter.unload()  # vLLM's: stops its engine-core process with the replica

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


def _takes_images(model_config: Any) -> bool:
    """Whether the model has a vision tower (every supported family does; a text-only checkpoint would not)."""
    return getattr(model_config, "vision_config", None) is not None


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
