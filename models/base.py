"""The model adapter interface: the one class a new model family implements.

A request reaching an adapter is already decoded: images are ``H x W x 3``
``uint8`` arrays and videos are ``T x H x W x 3`` ``uint8`` arrays. Adapters do
not parse URLs or files; that happens at the edge (see :mod:`models.media`).
"""

import abc
import dataclasses
from typing import Any, Callable, Iterator, Literal

import numpy as np
import torch

from memory.strategy import LoadStrategy

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length"]


@dataclasses.dataclass(frozen=True)
class TextPart:
    text: str


@dataclasses.dataclass(frozen=True)
class ImagePart:
    """One RGB image, ``H x W x 3`` ``uint8``."""

    pixels: np.ndarray


@dataclasses.dataclass(frozen=True)
class VideoPart:
    """Frames sampled from one video, ``T x H x W x 3`` ``uint8``, with their times."""

    frames: np.ndarray
    timestamps_s: tuple[float, ...] = ()


ContentPart = TextPart | ImagePart | VideoPart


@dataclasses.dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: tuple[ContentPart, ...]


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    messages: tuple[ChatMessage, ...]
    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int | None = None
    max_prompt_tokens: int | None = None

    @property
    def num_images(self) -> int:
        return sum(isinstance(part, ImagePart) for message in self.messages for part in message.content)

    @property
    def num_video_frames(self) -> int:
        return sum(
            len(part.frames) for message in self.messages for part in message.content if isinstance(part, VideoPart)
        )


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclasses.dataclass(frozen=True)
class TextDelta:
    """A piece of streamed answer text."""

    text: str


StopCheck = Callable[[], bool]


class PromptTooLongError(ValueError):
    """The request's prompt (text plus visual tokens) is over ``max_prompt_tokens``."""


class ModelAdapter(abc.ABC):
    """Load a model, answer requests with it, say what it is, let it go."""

    @abc.abstractmethod
    def load(self) -> None:
        """Bring weights and processor into memory. Called once before ``generate``."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Answer one request. Must not be called before ``load``."""

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
