"""The model replica: loads the model through the memory subsystem's chain, answers generation calls.

It knows nothing of HTTP. The ingress sends it decoded :class:`GenerationRequest`
objects through a Ray Serve handle and gets :class:`ReplicaAnswer` back. It
keeps its load report, its allocator read-back and its latest memory snapshot,
and ``describe`` returns all three.
"""

import dataclasses
import logging
import threading
import time
from typing import Any

import torch
from ray import serve
from ray.serve.exceptions import RayServeException

from deployments.config import AppConfig
from memory import MemorySnapshot
from memory.allocator import read_allocator_settings
from memory.budget import MemoryBudget, cpu_budget
from memory.estimate import RequestShape, activation_reserve_bytes, load_model_config
from memory.strategy import LoadStrategy, parse_chain
from models.base import GenerationRequest, GenerationResult
from models.loading import load_adapter
from models.tiny import ensure_tiny_model

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ServedBy:
    group: str
    replica: str
    precision: str
    device: str


@dataclasses.dataclass(frozen=True)
class ReplicaAnswer:
    result: GenerationResult
    served_by: ServedBy
    inference_seconds: float


def request_shape(config: AppConfig) -> RequestShape:
    """The largest request the limits allow, which sizes the activation reserve."""
    limits = config.limits
    return RequestShape(
        max_frames=limits.video_frames,
        max_pixels_per_frame=limits.max_pixels_per_frame,
        max_images=1,
        max_new_tokens=limits.max_tokens,
    )


class ModelReplica:
    """Loads the configured model on construction; Serve restarts it if that fails."""

    def __init__(self, config: AppConfig, group: str) -> None:
        self._group = group
        self._num_threads = max(1, int(config.model_replica.num_cpus))
        torch.set_num_threads(self._num_threads)
        model_path = str(ensure_tiny_model()) if config.model.source == "tiny" else config.model.source
        self._reserve_bytes = activation_reserve_bytes(load_model_config(model_path), request_shape(config))
        self._memory_bytes = config.model_replica.memory_bytes
        self._budget: MemoryBudget | None = None
        loaded = load_adapter(
            model_path,
            parse_chain(config.model_replica.chain, "cpu"),
            measure_budget=self._measure_budget,
            oom_retries=config.model_replica.oom_retries,
        )
        self._adapter = loaded.model
        self._load_report = loaded.report
        self._allocator = read_allocator_settings()
        self._precision = loaded.strategy.name
        self._device = loaded.strategy.device
        self._replica_id = _replica_id()
        self._snapshot = MemorySnapshot.measure()
        # One generation at a time: the replica's torch threads are its whole CPU share.
        self._generate_lock = threading.Lock()
        logger.info(
            "Replica %s of group %s ready: %s as %s, %d torch threads",
            self._replica_id,
            group,
            model_path,
            self._precision,
            self._num_threads,
        )

    def _measure_budget(self, strategy: LoadStrategy) -> MemoryBudget:
        self._budget = cpu_budget(
            MemorySnapshot.measure(), configured_bytes=self._memory_bytes, reserve_bytes=self._reserve_bytes
        )
        return self._budget

    def generate(self, request: GenerationRequest) -> ReplicaAnswer:
        with self._generate_lock:
            started = time.perf_counter()
            result = self._adapter.generate(request)
            elapsed = time.perf_counter() - started
        return ReplicaAnswer(
            result=result,
            served_by=ServedBy(
                group=self._group, replica=self._replica_id, precision=self._precision, device=self._device
            ),
            inference_seconds=elapsed,
        )

    def describe(self) -> dict[str, Any]:
        self._snapshot = MemorySnapshot.measure()
        return {
            "group": self._group,
            "replica": self._replica_id,
            "precision": self._precision,
            "model": self._adapter.describe(),
            "memory": self._snapshot.to_dict(),
            "budget": self._budget.to_dict() if self._budget else None,
            "load_report": self._load_report.to_dict(),
            "allocator": self._allocator.to_dict(),
        }

    def check_health(self) -> None:
        if not self._adapter.describe()["loaded"]:
            raise RuntimeError(f"Replica {self._replica_id}: model is not loaded")


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except RayServeException:
        # Outside a Serve replica (in-process benchmarks) there is no replica context.
        return "local"
