"""The ingress's FastAPI app: its Host check, its refusal of Serve's proxy hints, and its error handlers. Every error
is answered as JSON in OpenAI's shape, with the request's id; an unexpected one is a 500 whose stack trace goes to
the log only.

The routes are the Ingress deployment's own (:mod:`deployments.edge.ingress`), added to this app.
"""

import logging
from typing import Any, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.edge.hosts import host_allowed, keyless_refusal
from deployments.edge.proxy_headers import proxy_hint_in
from deployments.errors import ApiError, describe_validation_errors, error_body

logger = logging.getLogger(__name__)

app = FastAPI(
    title="video-detective",
    description="Ask a vision-language model about videos and images; OpenAI-compatible.",
    version="0.1.0",
    docs_url=None,  # /docs and /openapi.json are the Ingress's own routes, on only with ingress.api_docs
    redoc_url=None,
    openapi_url=None,
)


@app.middleware("http")
async def _check_request_head(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Before any route: a server with no API keys answers only loopback-named hosts and same-site requests
    (:func:`deployments.edge.hosts.keyless_refusal`); ``ingress.allowed_hosts`` (set on ``app.state`` by the
    Ingress), any other ``Host`` is a 400; and Serve's proxy hints (``x-request-timeout-seconds``, ``x-request-disconnect-disabled``), which its proxy
    obeys from anyone (:mod:`deployments.edge.proxy_headers`), are a 400 too. One middleware for both: each
    ``BaseHTTPMiddleware`` layer wraps every streamed response."""
    # This module's app, where the Ingress sets them: the app Serve serves is a copy of it (request.app), made
    # before any replica started.
    allowed = getattr(app.state, "allowed_hosts", ())
    host = request.headers.get("host", "")
    keyless_networks = getattr(app.state, "keyless_networks", None)
    if keyless_networks is not None and not _is_probe(request):
        refusal = keyless_refusal(host, request.headers.get("origin"), request.headers.get("sec-fetch-site"), keyless_networks)
        if refusal is not None:
            status, message, param, code = refusal
            return await _api_error_handler(request, ApiError(status, message, param=param, code=code))
    if allowed and not host_allowed(host, allowed):
        error = ApiError(400, f"Host {host[:100]!r} is not one this server answers to (ingress.allowed_hosts)",
                         param="host", code="host_not_allowed")
        return await _api_error_handler(request, error)
    hint = proxy_hint_in([name.decode("latin-1").lower() for name, _ in request.scope["headers"]])
    if hint is not None:
        error = ApiError(400, f"The {hint} header is for a trusted proxy in front of Serve, not for clients: it would "
                         "lift the server's request timeout or disconnect handling; send the request without it",
                         param=hint, code="proxy_header_refused")
        return await _api_error_handler(request, error)
    return await call_next(request)


_PROBE_PATHS = ("/healthz", "/health")  # asked by orchestrators by address, from anywhere; they tell nothing


def _is_probe(request: Request) -> bool:
    path, root = request.scope.get("path", ""), request.scope.get("root_path", "")
    return (path[len(root):] if root and path.startswith(root) else path) in _PROBE_PATHS


def request_id_of(request: Request) -> str:
    """The id Serve's proxy gave this request (the client's ``X-Request-ID`` if it sent one); it is also
    the ``X-Request-ID`` response header and tags Serve's log lines for the request."""
    header = request.headers.get("x-request-id")
    if header:
        return header
    return serve.context._get_serve_request_context().request_id


@app.exception_handler(ApiError)
async def _api_error_handler(request: Request, error: ApiError) -> JSONResponse:
    logger.info("Request %s refused with %d: %s", request_id_of(request), error.status_code, error.message)
    return JSONResponse(error.body(request_id_of(request)), status_code=error.status_code, headers=error.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error_handler(request: Request, error: RequestValidationError) -> JSONResponse:
    return validation_response(request, error.errors())


@app.exception_handler(StarletteHTTPException)
async def _http_error_handler(request: Request, error: StarletteHTTPException) -> JSONResponse:
    error_type = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    body = error_body(f"{request.method} {request.url.path}: {error.detail}", error_type, request_id=request_id_of(request))
    return JSONResponse(body, status_code=error.status_code, headers=getattr(error, "headers", None))


@app.exception_handler(Exception)
async def _unexpected_error_handler(request: Request, error: Exception) -> JSONResponse:
    request_id = request_id_of(request)
    logger.error("Request %s failed unexpectedly", request_id, exc_info=error)
    body = error_body(
        f"Internal error while serving request {request_id}; the server logs have the details.",
        "server_error",
        request_id=request_id,
    )
    return JSONResponse(body, status_code=500)


def validation_response(request: Request, errors: Any) -> JSONResponse:
    described = describe_validation_errors(list(errors))
    message = "Invalid request: " + "; ".join(f"{param}: {text}" for param, text in described)
    first_param = described[0][0] if described else None
    body = error_body(message, "invalid_request_error", param=first_param, request_id=request_id_of(request))
    return JSONResponse(body, status_code=422)
