"""What a request and its answer are: plain data, importable without torch.

A request reaching an adapter is already decoded: images are ``H x W x 3``
``uint8`` arrays and videos are ``T x H x W x 3`` ``uint8`` arrays. Adapters do
not parse URLs or files; that happens at the edge (see :mod:`models.media.inputs`).
"""

import dataclasses
from typing import Literal

import numpy as np

from models.media.identity import media_id

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length"]


@dataclasses.dataclass(frozen=True)
class TextPart:
    text: str


@dataclasses.dataclass(frozen=True)
class ImagePart:
    """One RGB image, ``H x W x 3`` ``uint8``; ``source``: where it came from (:func:`models.media.identity.media_source`),
    ``None`` for media with no identity (never cached)."""

    pixels: np.ndarray
    source: str | None = None

    @property
    def media_id(self) -> str | None:
        """The key of every media cache (:mod:`models.media.identity`)."""
        return None if self.source is None else media_id("image", self.source, self.pixels.shape)


@dataclasses.dataclass(frozen=True)
class VideoPart:
    """Frames sampled from one video, ``T x H x W x 3`` ``uint8``, with their times."""

    frames: np.ndarray
    timestamps_s: tuple[float, ...] = ()
    source: str | None = None

    @property
    def media_id(self) -> str | None:
        """The key of every media cache (:mod:`models.media.identity`): the source, the frame times, the size."""
        return None if self.source is None else media_id("video", self.source, self.frames.shape, self.timestamps_s)


ContentPart = TextPart | ImagePart | VideoPart


@dataclasses.dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: tuple[ContentPart, ...]


@dataclasses.dataclass(frozen=True)
class ResponseFormat:
    """Structured output: ``json_object`` (any JSON object) or ``json_schema`` (``schema_json`` validates it)."""

    kind: Literal["json_object", "json_schema"]
    schema_json: str | None = None  # serialised with sorted keys: one schema, one compiled grammar


@dataclasses.dataclass(frozen=True)
class DecodingOptions:
    """What shapes each next token and ends the answer, beyond temperature and seed (OpenAI's and vLLM's names).

    The defaults change nothing: every token may come, none is penalised, only the end token or
    ``max_tokens`` ends the answer.
    """

    top_p: float = 1.0
    top_k: int = 0  # 0: no cut
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    min_tokens: int = 0  # no end token (and no stop string) before this many tokens
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    response_format: ResponseFormat | None = None

    @property
    def is_default(self) -> bool:
        return self == DecodingOptions()


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    messages: tuple[ChatMessage, ...]
    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int | None = None
    max_prompt_tokens: int | None = None
    options: DecodingOptions = DecodingOptions()
    # 0: interactive. Higher: background work (a long video's segments, 1), queued behind every lower value in
    # each replica (vLLM's priority scheduling counts the same way: lower first).
    priority: int = 0

    @property
    def num_images(self) -> int:
        return sum(isinstance(part, ImagePart) for message in self.messages for part in message.content)

    @property
    def media_ids(self) -> tuple[str, ...]:
        """The identities of its images and videos, in order (those without one left out): what affinity routes on."""
        return tuple(
            part.media_id for message in self.messages for part in message.content
            if isinstance(part, (ImagePart, VideoPart)) and part.media_id is not None
        )

    @property
    def num_video_frames(self) -> int:
        return sum(
            len(part.frames) for message in self.messages for part in message.content if isinstance(part, VideoPart)
        )


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability under the model, and the most likely alternatives at its place."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    logprobs: tuple[TokenLogprob, ...] | None = None  # when the request asked for them

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclasses.dataclass(frozen=True)
class TextDelta:
    """A piece of streamed answer text, with its tokens' log-probabilities when asked for."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    completion_tokens: int = 0  # tokens generated so far, this piece's included (0: not counted)

    def followed_by(self, later: "TextDelta") -> "TextDelta":
        """This piece and the one after it, as one."""
        return TextDelta(self.text + later.text, self.logprobs + later.logprobs, later.completion_tokens or self.completion_tokens)
