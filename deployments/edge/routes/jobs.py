"""``/v1/video/jobs``: long videos as jobs (:mod:`deployments.edge.video_jobs`, :mod:`deployments.jobs`). A job is
stored here and answered at once; the job runner does the rest."""

import asyncio
import base64
import logging
from typing import Any

from fastapi import Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from deployments.edge.http_app import app
from deployments.edge.job_events import job_events, last_event_id
from deployments.edge.json_body import read_json_body
from deployments.edge.readiness import DESCRIBE_TIMEOUT_S
from deployments.edge.routes.base import IngressBase
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
from deployments.errors import ApiError
from deployments.jobs.records import JobRecord

logger = logging.getLogger(__name__)




class JobRoutes(IngressBase):
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
            await asyncio.wait_for(self._job_runner.cancel.remote(job.owner, job.id), timeout=DESCRIBE_TIMEOUT_S)
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
                await asyncio.wait_for(getattr(self._job_runner, method).remote(*args), timeout=DESCRIBE_TIMEOUT_S)
            except Exception as error:  # noqa: BLE001 - the store holds the job; the scan adopts it
                logger.warning("The job runner did not take %s%s (%s); its scan will", method, args, error)

        task = asyncio.get_event_loop().create_task(call())
        self._runner_calls.add(task)
        task.add_done_callback(self._runner_calls.discard)
