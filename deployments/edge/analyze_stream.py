"""``POST /v1/analyze`` with ``stream=true``: server-sent events as the answer is generated.

The events, each a named server-sent event with a JSON payload:

1. ``start``: the video's properties, the sampled frames (with thumbnails when asked), the upload and
   decode timings, and who serves the request: sent once a replica has admitted it;
2. ``delta``: ``{"text": ...}`` for each piece of answer text;
3. ``done``: the same body a non-streamed ``/v1/analyze`` answers with (text, frames the model saw,
   timings, tokens, who served it, out-of-memory retries);
4. or ``error``: an error body in the API's shape, if the answer stops after the headers were sent.

A client that goes away cancels the replica's generation, as a chat stream does.
"""

import json
import logging
from typing import Any, AsyncIterator

from ray.serve.handle import DeploymentResponseGenerator

from deployments.edge.analyze import PreparedAnalysis, analyze_body, served_by_body
from deployments.errors import error_body
from deployments.replica.protocol import ReplicaAnswer, StreamOpened
from deployments.routing.router import remote_cause
from models.requests import TextDelta

logger = logging.getLogger(__name__)


def named_event(name: str, payload: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def analysis_events(
    prepared: PreparedAnalysis,
    opened: StreamOpened,
    stream: DeploymentResponseGenerator,
    *,
    request_id: str,
    model_id: str,
) -> AsyncIterator[str]:
    finished = False
    try:
        yield named_event("start", {
            "request_id": request_id,
            "model": model_id,
            "video": prepared.video_body(),
            "frames": prepared.sampled_frames_body(),
            "timings": prepared.timings(),
            "served_by": served_by_body(opened.served_by),
            "used": opened.used.to_dict(),
        })
        async for item in stream:
            if isinstance(item, TextDelta):
                yield named_event("delta", {"text": item.text})
            elif isinstance(item, ReplicaAnswer):
                yield named_event("done", analyze_body(prepared, item, request_id=request_id, model_id=model_id))
                finished = True
                return
        raise RuntimeError("the replica's stream ended without an answer")
    except Exception as error:  # noqa: BLE001 - headers are sent: the error goes in the stream
        cause = remote_cause(error)
        logger.error("Request %s: analysis stream failed after it started: %s", request_id, cause)
        yield named_event(
            "error", error_body(f"The answer stopped: {type(cause).__name__}: {cause}", "server_error", request_id=request_id)
        )
    finally:
        if not finished:
            stream.cancel()
            logger.info("Request %s: analysis stream closed before the end; generation cancelled", request_id)
