"""The model adapter interface: the one class a new model family implements.

An adapter loads a checkpoint and answers with it. How requests reach it is an engine's job
(:mod:`models.engines.contract`): an adapter whose model exposes prefill and decode steps returns them from
:meth:`ModelAdapter.batch_engine` and is served with continuous batching; one that runs its own
generate loop (MiniCPM-V 2.6's ``model.chat``) leaves the default ``None`` and is served one request
at a time through :meth:`ModelAdapter.stream`.

It speaks the request and answer types of :mod:`models.requests` (no torch); import them from there.
"""

import abc
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from memory.strategy import LoadStrategy
from models.requests import GenerationRequest, GenerationResult, TextDelta

if TYPE_CHECKING:
    from models.decoding.grammar_server import SchemaCompileLimits
    from models.engines.contract import Engine
    from models.engines.transformers.hf_batch_model import HfBatchModel

StopCheck = Callable[[], bool]


class ModelAdapter(abc.ABC):
    """Load a model, answer requests with it, say what it is, let it go."""

    @abc.abstractmethod
    def load(self) -> None:
        """Bring weights and processor into memory. Called once before ``generate``."""

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Answer one request, for the serial engine (:class:`models.engines.transformers.serial_scheduler.SerialScheduler`). An adapter
        served otherwise (its ``batch_engine``'s steps, or its library's ``own_engine``) has none: the engine start
        (:func:`models.engines.start.start_engine`) never asks it for one. Must not be called before ``load``."""
        raise TypeError(f"{type(self).__name__} answers through its engine (batch_engine or own_engine), not generate")

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """What is loaded: model id, family, device, dtype. JSON-serialisable."""

    def stream(self, request: GenerationRequest, should_stop: StopCheck) -> Iterator[TextDelta | GenerationResult]:
        """Answer piece by piece, then the :class:`GenerationResult`; stop early when ``should_stop()``.

        The default answers in one piece; adapters that can stream token by token override it.
        """
        result = self.generate(request)
        yield TextDelta(result.text)
        yield result

    def batch_engine(self) -> "HfBatchModel | None":
        """Prefill and decode steps on the loaded model, for continuous batching; ``None`` (the default): this
        adapter runs its own generate loop, one request at a time."""
        return None

    def own_engine(
        self, *, max_batch_size: int, max_waiting: int, name: str, schema_compile: "SchemaCompileLimits",
        media_cache_bytes: int = 0,
    ) -> "Engine | None":
        """The engine of a library that brings its own (vLLM), started with the model; ``None`` (the default): the
        replica serves this adapter with one of ours (:func:`models.engines.start.start_engine`)."""
        return None

    def unload(self) -> None:
        """Release the model. The default does nothing."""


class CheckpointAdapter(ModelAdapter):
    """An adapter for one local checkpoint folder, loaded with one :class:`LoadStrategy`.

    What the loading chain and the replica rely on: ``model`` (``None`` until loaded and after
    ``unload``: its bytes are measured, its absence fails health) and ``strategy``.
    """

    def __init__(self, model_path: str, strategy: LoadStrategy) -> None:
        self._model_path = model_path
        self._strategy = strategy
        self._model: torch.nn.Module | None = None
        self._load_seconds: float | None = None

    @property
    def model(self) -> torch.nn.Module | None:
        return self._model

    @property
    def strategy(self) -> LoadStrategy:
        return self._strategy

    @property
    def is_loaded(self) -> bool:
        """Loaded and not let go: health fails a ready replica whose adapter says otherwise."""
        return self._model is not None

    def loaded_bytes(self) -> int:
        """What the load holds, as the chain's report shows it: the model's parameters, buffers and quantization
        state, measured."""
        from memory.estimate import measure_model_bytes

        return measure_model_bytes(self._model)
