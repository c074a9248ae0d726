"""What a request and its answer are: plain data, importable without torch.

A request reaching an adapter is already decoded: images are ``H x W x 3``
``uint8`` arrays and videos are ``T x H x W x 3`` ``uint8`` arrays. Adapters do
not parse URLs or files; that happens at the edge (see :mod:`models.media`).
"""

import dataclasses
from typing import Literal

import numpy as np

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
