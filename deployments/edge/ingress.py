"""The HTTP edge: a FastAPI app served by a CPU-only Ray Serve deployment.

It parses and checks requests, decodes media off the event loop, and calls the
model replica group through a handle. Every error is answered as JSON with a
status and a message; the stack trace goes to the log, never to the client.

No ``from __future__ import annotations`` here: FastAPI must see real
annotations, or it reads a pydantic body as a query parameter.
"""

import asyncio
import base64
import collections
import dataclasses
import logging
import threading
import time
from typing import Any, Awaitable, Literal

import pydantic
import ray
from fastapi import Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.exceptions import DeploymentUnavailableError, RayServeException
from ray.serve.handle import DeploymentHandle

from deployments.config.app_config import AppConfig
from deployments.edge.analyze import PreparedAnalysis, analyze_body, prepare_analysis
from deployments.edge.analyze_stream import analysis_events
from deployments.edge.auth import (
    bearer_key,
    check_anonymous,
    check_bearer,
    check_memory_view,
    load_admin_keys,
    load_api_keys,
)
from deployments.edge.chat_parameters import refuse_unsupported
from deployments.edge.chat_translation import to_generation_request
from deployments.edge.http_app import app, request_id_of, validation_response
from deployments.edge.job_events import EventStreamSlots, job_events, last_event_id
from deployments.edge.json_body import read_json_body
from deployments.edge.off_loop import run_off_loop
from deployments.edge.openai_schema import (
    SEED_MAX,
    ChatCompletionRequest,
    StreamOptions,
    chat_completion_body,
    model_body,
    model_list_body,
    new_completion_id,
)
from deployments.edge.rate_limit import PerKeyRate
from deployments.edge.sse import chat_completion_events
from deployments.edge.video_jobs import (
    JOB_PAGE_DEFAULT,
    JOB_PAGE_MAX,
    deleted_job_body,
    job_body,
    job_list_body,
    job_not_found,
    new_job,
    parse_job_request,
)
from deployments.edge.web_pages import page_response, static_response
from deployments.errors import ApiError
from deployments.files.service import FilesService, download_content_type
from deployments.files.store import owner_of
from deployments.files.uploads import remove_stale_uploads
from deployments.jobs.records import JobRecord
from deployments.jobs.store import JobStore
from deployments.observability.logs import route_logs_through_serve
from deployments.observability.metrics import IngressMetrics, fallback_reason_label
from deployments.replica.protocol import ReplicaAnswer, ServedBy
from deployments.routing.group_watch import GroupWatch, cpu_group_always_runs
from deployments.routing.groups import GPU_FLOOR_GROUP, GPU_GROUP, in_routing_order
from deployments.routing.interactive_load import InteractiveLoad, withdraw
from deployments.routing.router import NoGroupAvailableError, remote_cause, router_for
from deployments.routing.shared_breaker import SharedBreakers
from models.checkpoint_source import checkpoint_folder
from models.errors import InvalidModelInputError, InvalidParameterError, PromptTooLongError
from models.media.visual_tokens import VisualTokenGeometry
from models.requests import GenerationRequest

logger = logging.getLogger(__name__)

_RETRY_AFTER_S = "5"

# The Swagger page's own scripts and styles, from the CDN FastAPI names, and nothing else.
_DOCS_CSP = (
    "default-src 'none'; script-src https://cdn.jsdelivr.net 'unsafe-inline'; style-src https://cdn.jsdelivr.net "
    "'unsafe-inline'; img-src https://fastapi.tiangolo.com data:; connect-src 'self'"
)


def _readiness_headers(read_at: float, serving: bool) -> dict[str, str]:
    headers = {"x-readiness-read-at": f"{read_at:.6f}"}
    return headers if serving else {**headers, "Retry-After": _RETRY_AFTER_S}


def _choices(request: GenerationRequest, n: int) -> list[GenerationRequest]:
    """``n`` requests for ``n`` choices, sent together so that the replicas batch them; a seeded request's
    choice ``i`` is seeded ``seed + i`` (each different, all reproducible)."""
    if request.seed is None:
        return [request] * n
    return [dataclasses.replace(request, seed=(request.seed + index) % (SEED_MAX + 1)) for index in range(n)]


def _served_by_headers(served_by: ServedBy, inference_seconds: float | None = None) -> dict[str, str]:
    headers = {
        "x-served-by-group": served_by.group,
        "x-served-by-replica": served_by.replica,
        "x-served-by-precision": served_by.precision,
    }
    if inference_seconds is not None:
        headers["x-inference-seconds"] = f"{inference_seconds:.4f}"
    return headers


_REASON_CHARS = 300  # a dead replica's error carries its whole traceback
_DESCRIBE_TIMEOUT_S = 10.0
# Upload files older than this at start-up were left by an ingress that died mid-request.
_STALE_UPLOAD_S = 6 * 3600.0


@serve.deployment
@serve.ingress(app)
class Ingress:
    """CPU-only front door; routes to the GPU group, else the GPU floor replicas, else the CPU group."""

    def __init__(
        self,
        groups: dict[str, DeploymentHandle],
        config: AppConfig,
        job_runner: DeploymentHandle | None = None,
        *,
        max_model_len: int,
    ) -> None:
        """``groups``: the running groups' handles by name (``deployments.routing.groups``), in routing order."""
        route_logs_through_serve()
        remove_stale_uploads(config.ingress.upload_dir, older_than_s=_STALE_UPLOAD_S)
        self._groups = in_routing_order(groups)
        self._config = config
        self._model_id = config.model.model_id
        # The built-in tiny model is a Qwen2-VL with the processor's defaults; a checkpoint says its own sizes.
        source, options = config.model.source, config.model.storage_options
        self._geometry = (
            VisualTokenGeometry() if source == "tiny"
            else VisualTokenGeometry.from_model_folder(checkpoint_folder(source, storage_options=options, metadata_only=True))
        )
        self._api_keys = load_api_keys(config.auth)
        self._admin_keys = load_admin_keys(config.auth)
        # Groups that scale to zero: with no replica running they are idle, not down.
        self._idle_at_zero = {GPU_FLOOR_GROUP} | ({GPU_GROUP} if config.gpu_group.autoscaling.min_replicas == 0 else set())
        app.state.allowed_hosts = config.ingress.allowed_hosts  # one Ingress a process: the middleware reads it here
        # No keys: loopback in every sense (the Host a loopback name or an anonymous network's address, no cross-site).
        app.state.keyless_networks = None if self._api_keys else config.auth.anonymous_networks
        self._readiness_read: tuple[float, dict[str, Any], bool] | None = None  # (read at, body, serving)
        self._readiness_lock = asyncio.Lock()
        self._started = int(time.time())
        self._max_model_len = max_model_len  # the plan's: what one request may use, prompt and answer (/v1/models)
        self._fallbacks_by_reason: collections.Counter[str] = collections.Counter()
        self._metrics = IngressMetrics()
        app_name = serve.get_replica_context().app_name
        self._router = router_for(
            config, self._groups, on_fallback=self._count_fallback, on_spill=self._count_spill,
            shared_breakers=SharedBreakers(app_name),
        )
        self._spills_by_reason: collections.Counter[str] = collections.Counter()
        # Serve's count of the GPU groups' running replicas, read for the calls routed (none while idle).
        self._watch = GroupWatch.for_router(app_name, self._router)
        self._warm_task = asyncio.get_event_loop().create_task(
            self._watch.warm_up(self._router, cpu_group_always_runs(config))
        )
        self._files = FilesService(config, on_cache_lookup=self._metrics.record_frame_cache,
                                   held_by_jobs=lambda owner: sum(job.result_bytes for job in self._jobs.owned(owner)))
        self._jobs = JobStore(self._files.store)
        self._job_runner = job_runner
        self._runner_calls: set[asyncio.Task] = set()
        self._interactive = InteractiveLoad()
        self._event_streams = EventStreamSlots(config.jobs)
        self._job_creations = PerKeyRate(config.jobs.max_job_creations_per_minute,
                                         setting="jobs.max_job_creations_per_minute", what="created a job")
        # A key's job creations, one at a time in this replica: its count after the create never misses its own, and
        # 30 parallel POSTs of one key hold one worker thread, not all of them.
        self._creation_locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self._load_task = (
            asyncio.get_event_loop().create_task(self._publish_interactive_load()) if job_runner is not None else None
        )
        self._sweep_task = asyncio.get_event_loop().create_task(self._files.sweep_forever(self._files_in_use))

    def _files_in_use(self) -> frozenset[tuple[str, str]]:
        """(owner, file id) of every unfinished job's video: the file sweep leaves them (called in a worker thread)."""
        if self._job_runner is None:
            return frozenset()
        return frozenset((job.owner, job.file_id) for job in self._jobs.unfinished())

    def __del__(self) -> None:
        """Serve stops this replica: its interactive-load figure goes from the GCS with it."""
        if getattr(self, "_load_task", None) is None:
            return
        self._load_task.cancel()
        try:
            context = serve.get_replica_context()
            withdraw(context.app_name, context.replica_tag)
        except Exception as error:  # noqa: BLE001 - the readers delete a forgotten figure
            logger.warning("Withdrawing the interactive-load figure failed: %s", error)

    async def _publish_interactive_load(self) -> None:
        """Tell the job runner, through the GCS, of this replica's interactive requests while there are any."""
        context = serve.get_replica_context()
        await self._interactive.publish_forever(context.app_name, context.replica_tag)

    def _fallbacks(self) -> int:
        return sum(self._fallbacks_by_reason.values())

    def _count_fallback(self, reason: str) -> None:
        self._fallbacks_by_reason[fallback_reason_label(reason)] += 1
        self._metrics.record_fallback(reason)

    def _count_spill(self, reason: str) -> None:
        self._spills_by_reason[fallback_reason_label(reason)] += 1
        self._metrics.record_spill(reason)

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    async def ask_page(self, request: Request) -> Response:
        """The page to ask about a video; it calls the API routes below, with the key a person types in."""
        return page_response("ask", request.scope.get("root_path", ""))

    @app.get("/ui/memory", include_in_schema=False)
    async def memory_page(self, request: Request) -> Response:
        """The live view of ``/v1/memory``."""
        return page_response("memory", request.scope.get("root_path", ""))

    @app.get("/ui/static/{name}", include_in_schema=False)
    async def page_file(self, name: str, request: Request) -> Response:
        response = static_response(name)
        if response is None:
            raise ApiError(404, f"GET {request.url.path}: no such file", error_type="not_found_error")
        return response

    def _authorize(self, request: Request) -> str:
        """Check the caller's key (when keys are on); the owner its files are stored under."""
        authorization = request.headers.get("authorization")
        if not self._api_keys:
            check_anonymous(request.client.host if request.client else None, self._config.auth.anonymous_networks)
            return owner_of(None)
        check_bearer(authorization, self._api_keys)
        return owner_of(bearer_key(authorization))

    @app.get("/readyz")
    async def readyz(self, request: Request) -> JSONResponse:
        """200 while some group can serve (``degraded`` when not all can), 503 when none can."""
        self._authorize(request)
        read_at, body, serving = await self._cached_readiness()
        return JSONResponse(body, status_code=200 if serving else 503, headers=_readiness_headers(read_at, serving))

    @app.get("/health")
    async def health(self) -> JSONResponse:
        """``/readyz`` on the path vLLM and TGI use (benchmark clients probe it first); no key needed, so the
        body is the status alone, without the replicas' reasons, and it is read at most once per
        ``ingress.readiness_cache_s`` however often it is called."""
        read_at, body, serving = await self._cached_readiness()
        return JSONResponse({"status": body["status"]}, status_code=200 if serving else 503,
                            headers=_readiness_headers(read_at, serving))

    async def _cached_readiness(self) -> tuple[float, dict[str, Any], bool]:
        """The last readiness read while it is younger than ``ingress.readiness_cache_s``; callers meanwhile
        share one read."""
        max_age_s = self._config.ingress.readiness_cache_s
        async with self._readiness_lock:
            cached = self._readiness_read
            if cached is None or time.time() - cached[0] >= max_age_s:
                body, serving = await self._readiness()
                self._readiness_read = cached = (time.time(), body, serving)
        return cached

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_schema(self, request: Request) -> JSONResponse:
        self._require_api_docs()
        self._authorize(request)
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def api_docs_page(self, request: Request) -> HTMLResponse:
        self._require_api_docs()
        page = get_swagger_ui_html(openapi_url=f"{request.scope.get('root_path', '')}/openapi.json", title="video-detective API")
        page.headers["content-security-policy"] = _DOCS_CSP
        return page

    def _require_api_docs(self) -> None:
        if not self._config.ingress.api_docs:
            raise ApiError(404, "The API description is off here (ingress.api_docs: false); docs/api.md has the routes",
                           error_type="not_found_error", code="api_docs_off")

    async def _readiness(self) -> tuple[dict[str, Any], bool]:
        groups = await self._describe_groups()
        summary = {}
        for name, replicas in groups.items():
            ready = sum(1 for replica in replicas if replica.get("serving"))
            if name in self._idle_at_zero and not replicas:
                status = "idle"  # scaled to zero: the floor starts when the GPU group is busy, a GPU group on a call
            else:
                status = "up" if replicas and ready == len(replicas) else ("degraded" if ready else "down")
            summary[name] = {
                "ready_replicas": ready,
                "replicas": len(replicas),
                "status": status,
                "reasons": sorted({replica.get("reason", "") for replica in replicas if not replica.get("serving")}),
            }
        any_up = any(group["ready_replicas"] for group in summary.values())
        all_up = all(group["status"] in ("up", "idle") for group in summary.values())
        status = "ready" if all_up else ("degraded" if any_up else "unavailable")
        body = {
            "status": status, "groups": summary, "gpu_breaker": self._router.breaker.state,
            "breakers": self._router.breaker_states(), "fallbacks": self._fallbacks(),
        }
        return body, any_up

    @app.get("/v1/memory")
    async def memory(self, request: Request) -> dict[str, Any]:
        """Every replica of both groups: state, memory snapshot, budget, load report, allocator settings; for admin
        keys and callers from ``auth.memory_view_networks`` only."""
        self._authorize(request)
        check_memory_view(request.headers.get("authorization"), request.client.host if request.client else None,
                          self._admin_keys, self._config.auth.memory_view_networks)
        return {
            "groups": await self._describe_groups(),
            "gpu_breaker": self._router.breaker.state,
            "breakers": self._router.breaker_states(),
            "fallbacks": self._fallbacks(),
            "fallbacks_by_reason": dict(self._fallbacks_by_reason),
            "floor_spills_by_reason": dict(self._spills_by_reason),
            "frame_cache": dataclasses.asdict(self._files.frames.stats),  # this ingress replica's
            "jobs": await self._describe_jobs(),
        }

    async def _describe_jobs(self) -> dict[str, Any] | None:
        """The job runner's queued and running segments (per group); ``None`` with jobs off."""
        if self._job_runner is None:
            return None
        try:
            return await asyncio.wait_for(self._job_runner.describe.remote(), timeout=_DESCRIBE_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - the view shows what it can
            return {"state": "unreachable", "reason": f"{type(error).__name__}: {error}"[:_REASON_CHARS]}

    async def _describe_groups(self) -> dict[str, list[dict[str, Any]]]:
        await self._watch.fresh()  # which groups have replicas running, and Serve's word on those that do not
        async def describe(name: str, handle: DeploymentHandle) -> tuple[str, list[dict[str, Any]]]:
            try:
                results = await handle.broadcast("describe").results_async(
                    timeout_s=_DESCRIBE_TIMEOUT_S, return_exceptions=True
                )
            except TimeoutError:
                return name, [{"replica": None, "state": "unreachable", "reason": f"no answer within {_DESCRIBE_TIMEOUT_S:g} s"}]
            except (DeploymentUnavailableError, RayServeException) as error:
                if name in self._idle_at_zero and self._router.running_replicas(name) == 0:
                    return name, []  # scaled to zero (the floor whenever the GPU group is not busy)
                # No replica running: unschedulable (no GPU node), starting, or restarting.
                reason = self._watch.messages.get(name) or str(error)
                return name, [{"replica": None, "state": "not_running", "reason": reason}]
            described = []
            for result in results:
                if isinstance(result, BaseException):
                    reason = f"{type(result).__name__}: {result}"[:_REASON_CHARS]
                    described.append({"replica": None, "state": "unreachable", "reason": reason})
                else:
                    described.append(result)
            return name, described

        pairs = await asyncio.gather(*(describe(name, handle) for name, handle in self._groups.items()))
        return dict(pairs)

    @app.get("/v1/models")
    async def list_models(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return model_list_body(self._model_id, self._started, self._max_model_len)

    @app.get("/v1/models/{model_id:path}")
    async def get_model(self, model_id: str, request: Request) -> dict[str, Any]:
        self._authorize(request)
        self._check_served_model(model_id)
        return model_body(self._model_id, self._started, self._max_model_len)

    @app.get("/version")
    async def version(self) -> dict[str, str]:
        return {"version": app.version, "ray": ray.__version__}

    @app.post("/v1/files")
    async def create_file(self, request: Request) -> JSONResponse:
        """Multipart ``file`` and ``purpose``; the file object (OpenAI's shape) to use by its id."""
        body = await self._files.upload(request, self._authorize(request))
        self._metrics.files_uploaded.inc()
        return JSONResponse(body)

    @app.get("/v1/files")
    async def list_files(
        self,
        request: Request,
        purpose: str | None = None,
        limit: int = Query(default=10000, ge=1, le=10000),
        order: Literal["asc", "desc"] = "desc",
        after: str | None = None,
    ) -> dict[str, Any]:
        return await self._files.list(self._authorize(request), purpose=purpose, limit=limit, order=order, after=after)

    @app.get("/v1/files/{file_id}")
    async def get_file(self, file_id: str, request: Request) -> dict[str, Any]:
        owner = self._authorize(request)
        return (await asyncio.to_thread(self._files.record, owner, file_id, "file_id")).to_openai()

    @app.get("/v1/files/{file_id}/content")
    async def file_content(self, file_id: str, request: Request) -> StreamingResponse:
        record, chunks = await self._files.content(self._authorize(request), file_id)
        headers = {
            "content-length": str(record.bytes),
            "content-disposition": f'attachment; filename="{record.id}"',
            "x-content-type-options": "nosniff",
        }
        return StreamingResponse(chunks, media_type=download_content_type(record), headers=headers)

    @app.delete("/v1/files/{file_id}")
    async def delete_file(self, file_id: str, request: Request) -> dict[str, Any]:
        return await self._files.delete(self._authorize(request), file_id)

    # -- long videos as jobs (deployments.edge.video_jobs, deployments.jobs) --------------------------

    @app.post("/v1/video/jobs")
    async def create_video_job(self, request: Request) -> JSONResponse:
        """A job over an uploaded video: answered at once (202) with its id; the runner does the rest."""
        owner = self._authorize(request)
        self._require_jobs()
        limits = self._config.limits
        payload = await read_json_body(request, limits.max_request_bytes, max_objects=limits.max_schema_bytes // 2 + 64)
        body = parse_job_request(payload)
        self._check_served_model(body.model)
        self._job_creations.take(owner)
        try:
            async with self._creation_locks[owner]:
                job = await asyncio.to_thread(new_job, body, owner=owner, config=self._config, files=self._files,
                                              store=self._jobs)
        except ApiError:
            self._job_creations.give_back(owner)  # refused: it created nothing
            raise
        logger.info("Job %s stored: %r, %d segments of %g s, for owner %s", job.id, job.filename, job.segments,
                    job.segment_s, owner)
        self._tell_runner("submit", owner, job.id)
        location = f"{request.scope.get('root_path', '')}/v1/video/jobs/{job.id}"
        return JSONResponse(job_body(job, [], base=request.scope.get("root_path", "")), status_code=202,
                            headers={"location": location})

    @app.get("/v1/video/jobs")
    async def list_video_jobs(self, request: Request) -> dict[str, Any]:
        owner = self._authorize(request)
        self._require_jobs()
        return job_list_body(await asyncio.to_thread(self._jobs.owned, owner))

    @app.get("/v1/video/jobs/{job_id}")
    async def get_video_job(
        self,
        job_id: str,
        request: Request,
        after: int = Query(default=-1, ge=-1, description="The page after this segment index (-1: from the first)."),
        limit: int = Query(default=JOB_PAGE_DEFAULT, ge=1, le=JOB_PAGE_MAX, description="Segments on the page."),
    ) -> dict[str, Any]:
        job = await self._owned_job(request, job_id)
        page, next_after = await asyncio.to_thread(self._jobs.segment_page, job, after=after, limit=limit)
        return job_body(job, page, next_after=next_after, base=request.scope.get("root_path", ""))

    @app.get("/v1/video/jobs/{job_id}/thumbnails/{segment}/{frame}")
    async def video_job_thumbnail(self, job_id: str, segment: int, frame: int, request: Request) -> Response:
        """A recorded segment's sampled frame, as the JPEG its events link to."""
        job = await self._owned_job(request, job_id)
        data_url = await asyncio.to_thread(self._jobs.thumbnail, job, segment, frame)
        if data_url is None:
            raise ApiError(404, f"job {job_id} has no thumbnail {segment}/{frame} (no such segment recorded, or frame)",
                           error_type="not_found_error", param="frame", code="thumbnail_not_found")
        return Response(base64.b64decode(data_url.split(",", 1)[1]), media_type="image/jpeg",
                        headers={"cache-control": "private, max-age=86400", "x-content-type-options": "nosniff"})

    @app.get("/v1/video/jobs/{job_id}/events")
    async def video_job_events(self, job_id: str, request: Request) -> StreamingResponse:
        owner = self._authorize(request)
        await self._owned_job(request, job_id)
        resume_after = last_event_id(request.headers.get("last-event-id"))
        release = self._event_streams.take(owner, job_id)
        events = job_events(self._jobs, owner, job_id, resume_after=resume_after,
                            max_s=self._config.jobs.max_event_stream_s, base=request.scope.get("root_path", ""),
                            release=release)
        return StreamingResponse(events, media_type="text/event-stream", headers={"cache-control": "no-cache"})

    @app.delete("/v1/video/jobs/{job_id}")
    async def delete_video_job(self, job_id: str, request: Request) -> dict[str, Any]:
        """An unfinished job is cancelled: the request is stored first (a runner that starts later honours it),
        then the runner stops the job's segments; the answer is the job as it stands after. An ended job is
        deleted, results and all."""
        job = await self._owned_job(request, job_id)
        if job.is_final:
            await asyncio.to_thread(self._jobs.remove, job)
            return deleted_job_body(job)
        await asyncio.to_thread(self._jobs.request_cancel, job)
        try:
            await asyncio.wait_for(self._job_runner.cancel.remote(job.owner, job.id), timeout=_DESCRIBE_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - the stored request stands; the runner's scan honours it
            logger.warning("Job %s: the runner did not confirm the cancel (%s); its scan will", job.id, error)
        job = await asyncio.to_thread(self._jobs.get, job.owner, job.id) or job
        return {**job_body(job, base=request.scope.get("root_path", "")), "cancel_requested": True}

    async def _owned_job(self, request: Request, job_id: str) -> JobRecord:
        owner = self._authorize(request)
        self._require_jobs()
        job = await asyncio.to_thread(self._jobs.get, owner, job_id)
        if job is None:
            raise job_not_found(job_id)
        return job

    def _require_jobs(self) -> None:
        if self._job_runner is None:
            raise ApiError(404, "Video jobs are off here (jobs.enabled: false)", error_type="not_found_error",
                           code="jobs_off")

    def _tell_runner(self, method: str, *args: Any) -> None:
        """Call the runner without waiting (its scan finds the job anyway, a period later)."""
        async def call() -> None:
            try:
                await asyncio.wait_for(getattr(self._job_runner, method).remote(*args), timeout=_DESCRIBE_TIMEOUT_S)
            except Exception as error:  # noqa: BLE001 - the store holds the job; the scan adopts it
                logger.warning("The job runner did not take %s%s (%s); its scan will", method, args, error)

        task = asyncio.get_event_loop().create_task(call())
        self._runner_calls.add(task)
        task.add_done_callback(self._runner_calls.discard)

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
        return JSONResponse(body, headers=_served_by_headers(answers[0].served_by, answers[0].inference_seconds))

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
        headers = {**_served_by_headers(opened[0][0].served_by), "cache-control": "no-cache"}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    @app.post("/v1/analyze")
    async def analyze(self, request: Request) -> Response:
        """A video file (multipart field ``video``) and a ``question``; see :mod:`deployments.edge.analyze`.
        With ``stream=true`` the answer comes as server-sent events (:mod:`deployments.edge.analyze_stream`)."""
        owner = self._authorize(request)
        request_id = request_id_of(request)
        prepared = await prepare_analysis(
            request, request_id=request_id, config=self._config, files=self._files, owner=owner,
            check_served_model=self._check_served_model,
        )
        with self._interactive.request():  # checked and decoded: from here it waits on the groups, as a person does
            return await self._analyze(prepared, request_id)

    async def _analyze(self, prepared: PreparedAnalysis, request_id: str) -> Response:
        if prepared.fields.stream:
            opened, stream = await self._with_api_errors(
                self._router.open_stream("generate_stream", prepared.generation_request)
            )
            events = self._interactive.counted(
                analysis_events(prepared, opened, stream, request_id=request_id, model_id=self._model_id)
            )
            headers = {**_served_by_headers(opened.served_by), "cache-control": "no-cache"}
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        answer = await self._generate(prepared.generation_request)
        body = analyze_body(prepared, answer, request_id=request_id, model_id=self._model_id)
        return JSONResponse(body, headers=_served_by_headers(answer.served_by, answer.inference_seconds))

    def _check_served_model(self, requested: str | None) -> None:
        """A request may name the model; any name but the served one is a 404 (both routes)."""
        if requested is not None and requested != self._model_id:
            raise ApiError(
                404,
                f"The model {requested!r} is not served here; this server serves {self._model_id!r} (GET /v1/models)",
                error_type="not_found_error",
                param="model",
                code="model_not_found",
            )

    async def _generate(self, generation_request: GenerationRequest) -> ReplicaAnswer:
        return await self._with_api_errors(self._router.call("generate_stream", generation_request))

    async def _with_api_errors(self, routed: Awaitable[Any]) -> Any:
        """The router's call, once it knows which GPU groups have a replica running; errors from the replica groups,
        as the status a client can act on."""
        try:
            await self._watch.recent()
            return await routed
        except InvalidModelInputError as error:
            raise ApiError(
                400, f"The model cannot take this input: {remote_cause(error)}", code="invalid_model_input"
            ) from error
        except PromptTooLongError as error:
            raise ApiError(413, str(remote_cause(error)), code="prompt_too_long") from error
        except InvalidParameterError as error:
            cause = remote_cause(error)
            raise ApiError(400, str(cause), param=getattr(cause, "param", None), code="invalid_parameter") from error
        except NoGroupAvailableError as error:
            what = "Every model replica is busy" if error.busy else "No model replica can take the request now"
            raise ApiError(
                503,
                f"{what}: {error}. Retry later.",
                error_type="service_unavailable",
                code="overloaded" if error.busy else "unavailable",
                headers={"Retry-After": _RETRY_AFTER_S},
            ) from error

