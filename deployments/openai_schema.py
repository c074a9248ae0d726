"""The OpenAI-compatible wire format: request models and response builders.

Requests may carry fields this server does not use (``top_p``, ``user``, ...):
they are ignored, as the official client sends some of them. Content parts are
strict: an unknown ``type`` is a 422 that names it.
"""

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.requests import GenerationResult

# torch.Generator.manual_seed takes 64-bit seeds; bounded so that a huge integer is a 422, not a 500.
SEED_MAX = 2**63 - 1


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextContent(_Lenient):
    type: Literal["text"]
    text: str


class MediaUrl(_Lenient):
    url: str = Field(min_length=1)


class ImageUrlContent(_Lenient):
    type: Literal["image_url"]
    image_url: MediaUrl


class VideoUrlContent(_Lenient):
    type: Literal["video_url"]
    video_url: MediaUrl


ContentPartIn = Annotated[TextContent | ImageUrlContent | VideoUrlContent, Field(discriminator="type")]


class ChatMessageIn(_Lenient):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPartIn]


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    model: str | None = None
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX, description="Sampling seed, 0 to 2**63 - 1.")
    n: int = Field(default=1, ge=1, le=1, description="Only one choice per request is supported.")
    stream: bool = False
    stream_options: StreamOptions | None = None

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def chat_completion_body(completion_id: str, model_id: str, result: GenerationResult) -> dict[str, Any]:
    """The ``chat.completion`` object the official client parses."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.total_tokens,
        },
    }


def chat_completion_chunk(
    completion_id: str,
    model_id: str,
    created: int,
    delta: dict[str, Any] | None,
    finish_reason: str | None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; with ``delta=None`` the usage-only last chunk (``choices`` empty)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model_id,
        "choices": choices,
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def server_sent_event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def model_list_body(model_id: str, created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "video-detective"}],
    }
