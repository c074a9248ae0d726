"""Server-sent ``chat.completion.chunk`` events from a replica's stream, in OpenAI's shape.

The role first, a chunk per text piece, the ``finish_reason``, usage when asked, then ``[DONE]``. Once
the headers are sent an error can only go in the stream, as an error event. A stream that does not
reach its end (the client went away, or it failed) is cancelled, which stops the replica's generation.
"""

import logging
import time
from typing import Any, AsyncIterator

from ray.serve.handle import DeploymentResponseGenerator

from deployments.errors import error_body
from deployments.openai_schema import chat_completion_chunk, server_sent_event
from deployments.replica_protocol import ReplicaAnswer
from deployments.router import remote_cause
from models.requests import GenerationResult, TextDelta

logger = logging.getLogger(__name__)


def usage_body(result: GenerationResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.total_tokens,
    }


async def chat_completion_events(
    stream: DeploymentResponseGenerator, *, completion_id: str, model_id: str, include_usage: bool, request_id: str
) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(delta: dict[str, Any] | None, finish_reason: str | None = None, usage: dict[str, int] | None = None) -> str:
        return server_sent_event(chat_completion_chunk(completion_id, model_id, created, delta, finish_reason, usage))

    finished = False
    try:
        yield chunk({"role": "assistant", "content": ""})
        async for item in stream:
            if isinstance(item, TextDelta):
                yield chunk({"content": item.text})
            elif isinstance(item, ReplicaAnswer):
                yield chunk({}, finish_reason=item.result.finish_reason)
                if include_usage:
                    yield chunk(None, None, usage_body(item.result))
                break
        yield "data: [DONE]\n\n"
        finished = True
    except Exception as error:  # noqa: BLE001 - headers are sent: the error goes in the stream
        cause = remote_cause(error)
        logger.error("Request %s: stream failed after it started: %s", request_id, cause)
        yield server_sent_event(
            error_body(f"The answer stopped: {type(cause).__name__}: {cause}", "server_error", request_id=request_id)
        )
    finally:
        if not finished:
            # The client went away (or the stream failed): stop the replica's generation.
            stream.cancel()
            logger.info("Request %s: stream closed before the end; generation cancelled", request_id)
