"""The OpenAI-compatible wire format: request models and response builders.

Every top-level chat parameter is honoured or refused by name before this model sees the body
(:mod:`deployments.edge.chat_parameters`); fields inside messages and content parts that carry nothing
for this server (``name``, ``detail``) are ignored. Content parts are strict: an unknown ``type`` is a
422 that names it.
"""

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.requests import GenerationResult, TokenLogprob

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


class FileRef(_Lenient):
    file_id: str | None = None
    file_data: str | None = None
    filename: str | None = None


class FileContent(_Lenient):
    """OpenAI's file part: ``{"type": "file", "file": {"file_id": "file-..."}}`` (an uploaded video or image)."""

    type: Literal["file"]
    file: FileRef


ContentPartIn = Annotated[TextContent | ImageUrlContent | VideoUrlContent | FileContent, Field(discriminator="type")]


class ChatMessageIn(_Lenient):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPartIn]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's: usage so far in every chunk (GuideLLM asks for it)


class JsonSchemaIn(_Lenient):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormatIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaIn | None = None


class ChatCompletionRequest(BaseModel):
    """The body of ``POST /v1/chat/completions``; an unknown top-level field never gets here (400 first)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1, description="vLLM's; -1 or 0: no cut.")
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    logit_bias: dict[str, float] | None = None
    min_tokens: int | None = Field(default=None, ge=0)
    ignore_eos: bool | None = None
    stop: str | list[str] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormatIn | None = None
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX, description="Sampling seed, 0 to 2**63 - 1.")
    n: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=256)
    stream: bool | None = False
    stream_options: StreamOptions | None = None

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def chat_completion_body(completion_id: str, model_id: str, results: list[GenerationResult]) -> dict[str, Any]:
    """The ``chat.completion`` object the official client parses: one choice per result (``n``)."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason,
                "logprobs": logprobs_body(result.logprobs) if result.logprobs is not None else None,
            }
            for index, result in enumerate(results)
        ],
        "usage": usage_body(results),
    }


def usage_body(results: list[GenerationResult]) -> dict[str, int]:
    """The prompt is counted once, however many choices were generated from it (as vLLM and OpenAI do)."""
    prompt = results[0].prompt_tokens
    completion = sum(result.completion_tokens for result in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def logprobs_body(logprobs: tuple[TokenLogprob, ...]) -> dict[str, Any]:
    """OpenAI's ``logprobs`` object: ``content``, a list of tokens with their alternatives."""

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {
        "content": [
            {**entry(item.token, item.logprob), "top_logprobs": [entry(token, logprob) for token, logprob in item.top]}
            for item in logprobs
        ],
        "refusal": None,
    }


def chat_completion_chunk(
    completion_id: str,
    model_id: str,
    created: int,
    delta: dict[str, Any] | None,
    finish_reason: str | None,
    usage: dict[str, int] | None = None,
    *,
    index: int = 0,
    logprobs: tuple[TokenLogprob, ...] | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` of choice ``index``; with ``delta=None`` the usage-only last chunk (``choices`` empty)."""
    choice = {
        "index": index,
        "delta": delta,
        "finish_reason": finish_reason,
        "logprobs": logprobs_body(logprobs) if logprobs else None,
    }
    choices = [] if delta is None else [choice]
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


def model_body(model_id: str, created: int, max_model_len: int) -> dict[str, Any]:
    """One model entry; ``max_model_len`` (vLLM's field) is the longest prompt plus answer, in tokens."""
    return {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": "video-detective",
        "root": model_id,
        "max_model_len": max_model_len,
    }


def model_list_body(model_id: str, created: int, max_model_len: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_body(model_id, created, max_model_len)]}
