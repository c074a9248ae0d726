"""Server-sent ``chat.completion.chunk`` events from a replica's stream, in OpenAI's shape.

The role first, a chunk per text piece (with its tokens' ``logprobs`` when asked), the ``finish_reason``,
usage when asked, then ``[DONE]``; with ``n`` choices, each chunk names its choice's ``index``. Once
the headers are sent an error can only go in the stream, as an error event. A stream that does not
reach its end (the client went away, or it failed) is cancelled, which stops the replica's generation.
"""

import asyncio
import logging
import time
from typing import Any, AsyncIterator

from ray.serve.handle import DeploymentResponseGenerator

from deployments.edge.openai_schema import chat_completion_chunk, server_sent_event, usage_body
from deployments.errors import error_body
from deployments.replica.protocol import ReplicaAnswer
from deployments.routing.router import remote_cause
from models.requests import GenerationResult, TextDelta, TokenLogprob

logger = logging.getLogger(__name__)


_END = object()


async def chat_completion_events(
    streams: list[DeploymentResponseGenerator],
    *,
    completion_id: str,
    model_id: str,
    include_usage: bool,
    request_id: str,
    continuous_usage_prompt_tokens: int | None = None,
) -> AsyncIterator[str]:
    """One stream per choice (``n``), interleaved as their pieces come; each chunk names its choice's index.

    ``continuous_usage_prompt_tokens`` (vLLM's ``stream_options.continuous_usage_stats``): every text chunk
    carries the usage so far, over all choices, with this prompt count."""
    created = int(time.time())

    def chunk(
        index: int, delta: dict[str, Any] | None, finish_reason: str | None = None, usage: dict[str, int] | None = None,
        logprobs: tuple[TokenLogprob, ...] | None = None,
    ) -> str:
        return server_sent_event(chat_completion_chunk(
            completion_id, model_id, created, delta, finish_reason, usage, index=index, logprobs=logprobs
        ))

    finished = False
    results: dict[int, GenerationResult] = {}
    generated: dict[int, int] = {}

    def usage_so_far() -> dict[str, int] | None:
        if continuous_usage_prompt_tokens is None:
            return None
        completion = sum(generated.values())
        prompt = continuous_usage_prompt_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    try:
        for index in range(len(streams)):
            yield chunk(index, {"role": "assistant", "content": ""})
        async for index, item in _interleaved(streams):
            if isinstance(item, TextDelta):
                generated[index] = item.completion_tokens
                yield chunk(index, {"content": item.text}, usage=usage_so_far(), logprobs=item.logprobs)
            elif isinstance(item, ReplicaAnswer):
                results[index] = item.result
                generated[index] = item.result.completion_tokens
                yield chunk(index, {}, finish_reason=item.result.finish_reason, usage=usage_so_far())
        if include_usage:
            yield chunk(0, None, None, usage_body([results[index] for index in sorted(results)]))
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
            # The client went away (or the stream failed): stop the replicas' generation.
            for stream in streams:
                stream.cancel()
            logger.info("Request %s: stream closed before the end; generation cancelled", request_id)


async def _interleaved(streams: list[DeploymentResponseGenerator]) -> AsyncIterator[tuple[int, Any]]:
    """Every item of every stream, tagged with its stream's index, in the order they arrive, up to each one's answer."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield 0, item
            if isinstance(item, ReplicaAnswer):
                return
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: DeploymentResponseGenerator) -> None:
        try:
            async for item in stream:
                await queue.put((index, item))
                if isinstance(item, ReplicaAnswer):
                    break
            await queue.put((index, _END))
        except BaseException as error:  # noqa: BLE001 - handed to the reader, which raises it
            await queue.put((index, error))

    tasks = [asyncio.create_task(pump(index, stream)) for index, stream in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, item = await queue.get()
            if item is _END:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
