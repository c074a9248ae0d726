"""The HTTP edge: a FastAPI app served by a CPU-only Ray Serve deployment.

It parses and checks requests, decodes media off the event loop, and calls the
model replica group through a handle. Every error is answered as JSON with a
status and a message; the stack trace goes to the log, never to the client.

No ``from __future__ import annotations`` here: FastAPI must see real
annotations, or it reads a pydantic body as a query parameter.
"""

import asyncio
import json
import logging
import time
from typing import Any

import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.chat_translation import to_generation_request
from deployments.config import AppConfig
from deployments.errors import ApiError, describe_validation_errors, error_body
from deployments.model_replica import ReplicaAnswer
from deployments.openai_schema import (
    ChatCompletionRequest,
    chat_completion_body,
    model_list_body,
    new_completion_id,
)
from models.hf_adapter import InvalidModelInputError

logger = logging.getLogger(__name__)

_RETRY_AFTER_S = "5"

app = FastAPI(
    title="video-detective",
    description="Ask a vision-language model about videos and images; OpenAI-compatible.",
    version="0.1.0",
)


def _request_id(request: Request) -> str:
    header = request.headers.get("x-request-id")
    if header:
        return header
    return serve.context._get_serve_request_context().request_id


@app.exception_handler(ApiError)
async def _api_error_handler(request: Request, error: ApiError) -> JSONResponse:
    logger.info("Request %s refused with %d: %s", _request_id(request), error.status_code, error.message)
    return JSONResponse(error.body(_request_id(request)), status_code=error.status_code, headers=error.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error_handler(request: Request, error: RequestValidationError) -> JSONResponse:
    return _validation_response(request, error.errors())


@app.exception_handler(StarletteHTTPException)
async def _http_error_handler(request: Request, error: StarletteHTTPException) -> JSONResponse:
    error_type = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    body = error_body(f"{request.method} {request.url.path}: {error.detail}", error_type, request_id=_request_id(request))
    return JSONResponse(body, status_code=error.status_code, headers=getattr(error, "headers", None))


@app.exception_handler(Exception)
async def _unexpected_error_handler(request: Request, error: Exception) -> JSONResponse:
    request_id = _request_id(request)
    logger.error("Request %s failed unexpectedly", request_id, exc_info=error)
    body = error_body(
        f"Internal error while serving request {request_id}; the server logs have the details.",
        "server_error",
        request_id=request_id,
    )
    return JSONResponse(body, status_code=500)


def _validation_response(request: Request, errors: Any) -> JSONResponse:
    described = describe_validation_errors(list(errors))
    message = "Invalid request: " + "; ".join(f"{param}: {text}" for param, text in described)
    first_param = described[0][0] if described else None
    body = error_body(message, "invalid_request_error", param=first_param, request_id=_request_id(request))
    return JSONResponse(body, status_code=422)


async def _read_json_body(request: Request, max_bytes: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"Request body is {int(declared)} bytes; the limit is {max_bytes} bytes")
    content_type = request.headers.get("content-type", "")
    if content_type and not content_type.split(";")[0].strip().lower().endswith("json"):
        raise ApiError(415, f"Content-Type {content_type!r} is not supported here; send application/json")
    raw = await request.body()
    if len(raw) > max_bytes:
        raise ApiError(413, f"Request body is {len(raw)} bytes; the limit is {max_bytes} bytes")
    if not raw:
        raise ApiError(400, "Request body is empty; send a JSON object")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, f"Request body is not valid JSON: {error}") from error


def _served_by_headers(answer: ReplicaAnswer) -> dict[str, str]:
    served_by = answer.served_by
    return {
        "x-served-by-group": served_by.group,
        "x-served-by-replica": served_by.replica,
        "x-served-by-precision": served_by.precision,
        "x-inference-seconds": f"{answer.inference_seconds:.4f}",
    }


@serve.deployment
@serve.ingress(app)
class Ingress:
    """CPU-only front door; holds a handle to the model replica group."""

    def __init__(self, model_group: DeploymentHandle, config: AppConfig) -> None:
        self._model_group = model_group
        self._config = config
        self._model_id = config.model.model_id
        self._started = int(time.time())

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models(self) -> dict[str, Any]:
        return model_list_body(self._model_id, self._started)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> JSONResponse:
        payload = await _read_json_body(request, self._config.limits.max_request_bytes)
        try:
            chat = ChatCompletionRequest.model_validate(payload)
        except pydantic.ValidationError as error:
            return _validation_response(request, error.errors())
        if chat.model is not None and chat.model != self._model_id:
            raise ApiError(
                404,
                f"The model {chat.model!r} is not served here; this server serves {self._model_id!r} (GET /v1/models)",
                error_type="not_found_error",
                param="model",
                code="model_not_found",
            )
        if chat.stream:
            raise ApiError(400, "stream: streaming responses are not supported yet; send stream=false", param="stream")
        generation_request = await asyncio.to_thread(to_generation_request, chat, self._config)
        answer = await self._generate(generation_request)
        body = chat_completion_body(new_completion_id(), self._model_id, answer.result)
        return JSONResponse(body, headers=_served_by_headers(answer))

    async def _generate(self, generation_request) -> ReplicaAnswer:
        try:
            return await self._model_group.generate.remote(generation_request)
        except InvalidModelInputError as error:
            raise ApiError(400, f"The model cannot take this input: {error}", code="invalid_model_input") from error
        except (DeploymentUnavailableError, BackPressureError) as error:
            raise ApiError(
                503,
                f"No model replica can take the request now ({type(error).__name__}); retry later",
                error_type="service_unavailable",
                headers={"Retry-After": _RETRY_AFTER_S},
            ) from error
