"""The model replica: one class that loads an adapter and answers generation calls.

It knows nothing of HTTP. The ingress sends it decoded :class:`GenerationRequest`
objects through a Ray Serve handle and gets :class:`ReplicaAnswer` back.
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
from models.base import GenerationRequest, GenerationResult
from models.hf_adapter import HuggingFaceVisionLanguageAdapter
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


class ModelReplica:
    """Loads the configured model on construction; Serve restarts it if that fails."""

    def __init__(self, config: AppConfig, group: str) -> None:
        self._group = group
        self._num_threads = max(1, int(config.model_replica.num_cpus))
        torch.set_num_threads(self._num_threads)
        model_path = str(ensure_tiny_model()) if config.model.source == "tiny" else config.model.source
        self._adapter = HuggingFaceVisionLanguageAdapter(model_path, device="cpu", dtype=config.model.dtype)
        self._adapter.load()
        description = self._adapter.describe()
        self._precision = description["dtype"]
        self._device = description["device"]
        self._replica_id = _replica_id()
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
        return {
            "group": self._group,
            "replica": self._replica_id,
            "model": self._adapter.describe(),
            "memory": MemorySnapshot.measure().to_dict(),
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
