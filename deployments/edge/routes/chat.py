"""``/v1/chat/completions``: OpenAI's chat API, streamed or not, ``n`` choices batched together."""

import asyncio
import dataclasses
import logging
import threading

import pydantic
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from deployments.edge.chat_parameters import refuse_unsupported
from deployments.edge.chat_translation import to_generation_request
from deployments.edge.http_app import app, request_id_of, validation_response
from deployments.edge.json_body import read_json_body
from deployments.edge.off_loop import run_off_loop
from deployments.edge.openai_schema import (
    SEED_MAX,
    ChatCompletionRequest,
    StreamOptions,
    chat_completion_body,
    new_completion_id,
)
from deployments.edge.routes.base import IngressBase, served_by_headers
from deployments.edge.sse import chat_completion_events
from models.requests import GenerationRequest

logger = logging.getLogger(__name__)




def _choices(request: GenerationRequest, n: int) -> list[GenerationRequest]:
    """``n`` requests for ``n`` choices, sent together so that the replicas batch them; a seeded request's
    choice ``i`` is seeded ``seed + i`` (each different, all reproducible)."""
    if request.seed is None:
        return [request] * n
    return [dataclasses.replace(request, seed=(request.seed + index) % (SEED_MAX + 1)) for index in range(n)]


class ChatRoutes(IngressBase):
    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        owner = self._authorize(request)
        limits = self._config.limits
        # The objects a request within the limits can hold: a few per content part, and the schema's.
        max_objects = 4 * limits.max_messages * limits.max_content_parts + limits.max_schema_bytes // 2 + 64
        payload = await read_json_body(request, limits.max_request_bytes, max_objects=max_objects)
        try:
            chat = ChatCompletionRequest.model_validate(refuse_unsupported(payload))
        except pydantic.ValidationError as error:
            return validation_response(request, error.errors())
        self._check_served_model(chat.model)
        # Job segments back off while people wait (a stream counts to its end); only a request that passed the
        # key and the body's checks counts, so a stream of refusals cannot hold jobs back.
        with self._interactive.request():
            return await self._chat_completions(request, chat, owner)

    async def _chat_completions(self, request: Request, chat: ChatCompletionRequest, owner: str) -> Response:
        if chat.user:
            logger.info("Request %s is from user %r", request_id_of(request), chat.user)
        generation_request = await run_off_loop(
            stop := threading.Event(), to_generation_request, chat, self._config, self._geometry,
            files=self._files, owner=owner, stop=stop,
        )
        choices = _choices(generation_request, chat.n or 1)
        completion_id = new_completion_id()
        if chat.stream:
            return await self._stream_chat(request, choices, completion_id, chat.stream_options or StreamOptions())
        answers = await asyncio.gather(*(self._generate(choice) for choice in choices))
        body = chat_completion_body(completion_id, self._model_id, [answer.result for answer in answers])
        return JSONResponse(body, headers=served_by_headers(answers[0].served_by, answers[0].inference_seconds))

    async def _stream_chat(
        self, request: Request, choices: list[GenerationRequest], completion_id: str, options: StreamOptions
    ) -> StreamingResponse:
        """Server-sent ``chat.completion.chunk`` events; a client that goes away cancels the replica's generation."""
        opened = await asyncio.gather(
            *(self._with_api_errors(self._router.open_stream("generate_stream", choice)) for choice in choices),
            return_exceptions=True,
        )
        failed = [item for item in opened if isinstance(item, BaseException)]
        if failed:
            for item in opened:
                if not isinstance(item, BaseException):
                    item[1].cancel()
            raise failed[0]
        events = self._interactive.counted(chat_completion_events(
            [stream for _, stream in opened], completion_id=completion_id, model_id=self._model_id,
            include_usage=options.include_usage, request_id=request_id_of(request),
            continuous_usage_prompt_tokens=opened[0][0].prompt_tokens if options.continuous_usage_stats else None,
        ))
        headers = {**served_by_headers(opened[0][0].served_by), "cache-control": "no-cache"}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
