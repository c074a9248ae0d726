"""The replica's loader: a thread that moves the replica's :class:`~deployments.replica.lifecycle.ReplicaLifecycle`,
so the constructor never fails for lack of memory.

First it fetches the checkpoint onto this node when ``model.source`` names an object store (once per node;
:mod:`models.checkpoint_source`); a source that cannot be fetched ends in ``failed`` (health fails, Serve
starts the replica again). From ``loading``: to ``waiting_for_memory`` (nothing fits now, or no GPU is visible: measure again
every ``load_retry_period_s`` and load as soon as the memory is there), to ``failed`` (a non-memory
error, which a retry cannot fix: bad weights, bad config, a bug), or, once a strategy loaded, to
``ready`` through ``on_loaded``, once ``warm_up`` generated on the loaded link (a link that cannot hands over to
the next) (the replica starts its engine there). An unexpected exception also
ends in ``failed``, logged with its traceback, so the replica never stays ``loading`` forever and
health fails with the cause.
"""

import logging
import threading
from typing import Callable

import torch

from deployments.config.groups import CpuGroupSettings, GpuGroupSettings
from deployments.observability.metrics import ReplicaMetrics
from deployments.replica.lifecycle import ReplicaLifecycle, ReplicaState
from memory.budget import MemoryBudget, cpu_budget
from memory.chain_load import LoadReport, ModelLoadError, NothingFitsError
from memory.estimate import WeightEstimate
from memory.gpu import NoGpuVisibleError, limit_to_share, measure_gpu_budget
from memory.probe import MemorySnapshot
from memory.strategy import LoadStrategy
from models.adapters.base import CheckpointAdapter
from models.adapters.loading import load_adapter
from models.checkpoint_source import CheckpointSourceError

logger = logging.getLogger(__name__)


class ReplicaLoader:
    """Loads through the group's chain in a thread; ``on_loaded`` runs in that thread once a strategy loaded."""

    def __init__(
        self,
        *,
        group: str,
        replica_id: str,
        fetch_checkpoint: Callable[[], str],
        settings: GpuGroupSettings | CpuGroupSettings,
        chain: tuple[LoadStrategy, ...],
        estimates: dict[LoadStrategy, WeightEstimate],
        reserve_bytes: int,
        link_reserves: dict[LoadStrategy, tuple[int, str]],
        make_adapter: Callable[[str, LoadStrategy], CheckpointAdapter],
        metrics: ReplicaMetrics,
        lifecycle: ReplicaLifecycle,
        warm_up: Callable[[CheckpointAdapter, LoadStrategy], None],
        on_loaded: Callable[[CheckpointAdapter, LoadStrategy], None],
    ) -> None:
        self._group = group
        self._replica_id = replica_id
        self._fetch_checkpoint = fetch_checkpoint
        self.model_path: str | None = None  # the checkpoint's folder on this node, once fetched
        self._settings = settings
        self._chain = chain
        self._estimates = estimates
        self._reserve_bytes = reserve_bytes
        self._link_reserves = link_reserves  # (bytes, whose) for links that plan their own activations (vLLM's)
        self._make_adapter = make_adapter
        self._metrics = metrics
        self._warm_up = warm_up
        self._on_loaded = on_loaded
        self._lifecycle = lifecycle
        self.on_cuda = all(strategy.device == "cuda" for strategy in chain)
        self.adapter: CheckpointAdapter | None = None
        self.strategy: LoadStrategy | None = None
        self.load_report: LoadReport | None = None
        self.budget: MemoryBudget | None = None
        self.load_attempts = 0
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{group}-loader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _measure_budget(self, strategy: LoadStrategy) -> MemoryBudget:
        reserve, name = self._link_reserves.get(strategy, (self._reserve_bytes, "activation reserve"))
        if isinstance(self._settings, GpuGroupSettings):  # a share of a GPU (GroupPlan.on_gpu_share)
            context = self._settings.cuda_context_bytes if self.on_cuda else 0
            self.budget = measure_gpu_budget(
                share=self._settings.num_gpus, context_bytes=context, reserve_bytes=reserve, reserve_name=name
            )
        else:
            self.budget = cpu_budget(
                MemorySnapshot.measure(), configured_bytes=self._settings.memory_bytes, reserve_bytes=reserve,
                reserve_name=name,
            )
        return self.budget

    def _run(self) -> None:
        try:
            self._load_until_ready()
        except Exception as error:  # noqa: BLE001 - a loader that dies silently leaves the replica 'loading' forever
            logger.error("Replica %s of group %s: the loader failed unexpectedly", self._replica_id, self._group,
                         exc_info=error)
            self._lifecycle.try_move(ReplicaState.FAILED, f"the loader failed unexpectedly: {type(error).__name__}: {error}")

    def _load_until_ready(self) -> None:
        if self.on_cuda and torch.cuda.is_available():
            # Ray shares the device but does not isolate its memory: enforce the share here.
            limit_to_share(self._settings.num_gpus, context_bytes=self._settings.cuda_context_bytes)
        try:
            self.model_path = self._fetch_checkpoint()
        except CheckpointSourceError as error:
            self._lifecycle.try_move(ReplicaState.FAILED, f"the checkpoint could not be fetched: {error}")
            return
        while not self.stopping.is_set():
            self.load_attempts += 1
            try:
                loaded = load_adapter(
                    self.model_path,
                    self._chain,
                    measure_budget=self._measure_budget,
                    oom_retries=self._settings.oom_retries,
                    estimates=self._estimates,
                    make_adapter=self._make_adapter,
                    warm_up=self._warm_up,
                )
            except NothingFitsError as error:
                self.load_report = error.report
                self._wait_for_memory(str(error).splitlines()[0] + " " + error.budget.explain())
            except ModelLoadError as error:
                self.load_report = error.report
                self._lifecycle.try_move(ReplicaState.FAILED, str(error))
                return
            except NoGpuVisibleError as error:
                self._wait_for_memory(str(error))
            else:
                self.adapter, self.strategy, self.load_report = loaded.model, loaded.strategy, loaded.report
                self._metrics.set_precision(loaded.strategy.name)
                self._record_attempts(loaded.report)
                self._on_loaded(loaded.model, loaded.strategy)
                return
            self._record_attempts(self.load_report)
            self.stopping.wait(self._settings.load_retry_period_s)

    def _record_attempts(self, report: LoadReport | None) -> None:
        for attempt in report.attempts if report else ():
            self._metrics.record_load_attempt(attempt.strategy, attempt.outcome)

    def _wait_for_memory(self, reason: str) -> None:
        self._lifecycle.try_move(
            ReplicaState.WAITING_FOR_MEMORY, f"{reason}; measuring again every {self._settings.load_retry_period_s:g} s"
        )

    def weights_bytes(self) -> int:
        """Measured bytes of the loaded weights; before a load, the smallest estimate tried."""
        loaded = self.load_report.loaded if self.load_report else None
        if loaded is not None and loaded.measured_bytes is not None:
            return loaded.measured_bytes
        if self.load_report and self.load_report.attempts:
            return min(attempt.estimate_bytes for attempt in self.load_report.attempts)
        return 0

    def stop(self) -> None:
        """No more load attempts; a load under way finishes (``on_loaded`` then finds the replica unloaded)."""
        self.stopping.set()

    def close(self) -> None:
        self.stop()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
