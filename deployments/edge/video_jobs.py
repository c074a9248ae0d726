"""``/v1/video/jobs``: a long video analysed segment by segment, as a durable job.

``POST`` checks the request (the file is the caller's video, the segments within ``jobs`` and ``limits``,
the schema bounded as ``response_format``'s, the key's quotas), probes the video's duration from its header,
stores the job and answers at once; the job runner (:mod:`deployments.jobs.runner`) does the rest. ``GET``
reads the job's record (its summary) and one page of its recorded segments (``?after=&limit=``) from the store,
so any ingress answers for any job at a bounded cost, and the events route
(:mod:`deployments.edge.job_events`) streams each segment's result as it is recorded. Another key's job is a
404, as a file is. The quotas are counted after the job is stored, and a job over one is removed again
(:func:`_check_quotas_after_create`).
"""

import dataclasses
import logging
import math
import time
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from deployments.config.app_config import AppConfig
from deployments.config.jobs import JobsSettings
from deployments.edge.analyze import checked_question, finite_or_none
from deployments.edge.chat_parameters import check_schema_size
from deployments.edge.chat_translation import media_error_to_api_error
from deployments.edge.openai_schema import SEED_MAX
from deployments.errors import ApiError, describe_validation_errors
from deployments.files.service import FilesService
from deployments.jobs.kinds.video_timeline import DEFAULT_EVENTS_SCHEMA, in_time_order, schema_json
from deployments.jobs.records import JobRecord, new_job_id, segment_count
from deployments.jobs.results import SegmentResult
from deployments.jobs.store import JobStore
from models.media import inputs as media

logger = logging.getLogger(__name__)

JOB_PAGE_DEFAULT = 100  # segments on one page of GET /v1/video/jobs/{id}
JOB_PAGE_MAX = 500

_DEFAULT_SEGMENT_TOKENS = 384  # the default schema's eight events of 200 characters fit
_DEFAULT_FINAL_TOKENS = 256


class VideoJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file_id: str = Field(description="An uploaded video (POST /v1/files).")
    question: str = Field(description="What to ask of every segment, and of the whole video at the end.")
    segment_s: float | None = Field(default=None, gt=0, description="Each segment's length (jobs.default_segment_s).")
    frames: int | None = Field(default=None, ge=1, description="Frames sampled uniformly in each segment.")
    fps: float | None = Field(default=None, gt=0, description="Or: frames a second in each segment, capped.")
    json_schema: dict[str, Any] | None = Field(
        default=None, description="Each segment's answer's JSON schema; default: a list of events (time_s, description)."
    )
    max_tokens: int | None = Field(default=None, ge=1, description="Each segment's answer's most tokens.")
    final_max_tokens: int | None = Field(default=None, ge=1, description="The final answer's most tokens.")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX)
    model: str | None = None

    @field_validator("question")
    @classmethod
    def _not_blank(cls, question: str) -> str:
        return checked_question(question)

    @field_validator("segment_s", "fps")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        return finite_or_none(value)


def parse_job_request(payload: Any) -> VideoJobRequest:
    try:
        return VideoJobRequest.model_validate(payload)
    except pydantic.ValidationError as error:
        described = describe_validation_errors(error.errors())
        raise ApiError(400, "Invalid job: " + "; ".join(f"{param}: {text}" for param, text in described),
                       param=described[0][0]) from error


def new_job(
    body: VideoJobRequest, *, owner: str, config: AppConfig, files: FilesService, store: JobStore
) -> JobRecord:
    """Check ``body`` against the limits, the file and the key's quotas, and store it as a queued job (blocking:
    reads the store and the video's header). The caller runs one creation of a key at a time in this replica
    (the ingress's per-key lock), so that its count after the create never misses its own."""
    limits, settings = config.limits, config.jobs
    if len(body.question.encode()) > limits.max_question_bytes:
        raise ApiError(413, f"question: {len(body.question.encode())} bytes; the limit is {limits.max_question_bytes} "
                       "(limits.max_question_bytes)", param="question")
    if body.frames is not None and body.fps is not None:
        raise ApiError(400, "Send either frames or fps, not both", param="fps")
    if body.frames is not None and body.frames > limits.max_video_frames:
        raise ApiError(400, f"frames: {body.frames} a segment asked; the limit is {limits.max_video_frames} "
                       "(limits.max_video_frames)", param="frames")
    if body.fps is not None and body.fps > limits.max_video_fps:
        raise ApiError(400, f"fps: {body.fps:g} asked; the limit is {limits.max_video_fps:g} (limits.max_video_fps)",
                       param="fps")
    for name, value in (("max_tokens", body.max_tokens), ("final_max_tokens", body.final_max_tokens)):
        if value is not None and value > limits.max_tokens:
            raise ApiError(400, f"{name}: {value} requested; the limit is {limits.max_tokens} (limits.max_tokens)", param=name)
    segment_s = body.segment_s if body.segment_s is not None else settings.default_segment_s
    if not settings.min_segment_s <= segment_s <= settings.max_segment_s:
        raise ApiError(400, f"segment_s: {segment_s:g} s; segments may be {settings.min_segment_s:g} s to "
                       f"{settings.max_segment_s:g} s (jobs.min_segment_s, jobs.max_segment_s)", param="segment_s")
    schema = body.json_schema if body.json_schema is not None else DEFAULT_EVENTS_SCHEMA
    encoded_schema = schema_json(schema)
    if body.json_schema is not None:
        check_schema_size(schema, encoded_schema, limits, param="json_schema", where="json_schema")
    record = files.video_record(owner, body.file_id, "file_id")
    _check_quotas(store.owned(owner), 0, settings)  # plainly over: refused before the video is read
    video_limits = settings.video_limits(limits)
    try:
        info = files.probe(record, video_limits)
    except media.MediaError as error:
        raise media_error_to_api_error(error, "file_id") from error
    segments = segment_count(info.duration_s, segment_s)
    if segments > settings.max_segments_per_job:
        raise ApiError(400, f"segment_s: {segment_s:g} s cuts the {info.duration_s:.0f}-second video into {segments} "
                       f"segments; a job may have {settings.max_segments_per_job} (jobs.max_segments_per_job): ask for "
                       f"segments of at least {math.ceil(info.duration_s / settings.max_segments_per_job)} s",
                       param="segment_s")
    job = JobRecord(
        id=new_job_id(), owner=owner, file_id=record.id, filename=record.filename, file_sha256=record.sha256,
        question=body.question, duration_s=info.duration_s, segment_s=segment_s,
        frames_per_segment=body.frames if body.fps is None else None, fps=body.fps,
        json_schema=encoded_schema, custom_schema=body.json_schema is not None,
        max_tokens=body.max_tokens or min(_DEFAULT_SEGMENT_TOKENS, limits.max_tokens),
        final_max_tokens=body.final_max_tokens or min(_DEFAULT_FINAL_TOKENS, limits.max_tokens),
        temperature=body.temperature if body.temperature is not None else config.generation.default_temperature,
        seed=body.seed, segments=segments, created_at=time.time(),
    )
    if job.frames_per_segment is None and job.fps is None:
        job = dataclasses.replace(job, frames_per_segment=limits.video_frames)
    store.create(job)
    try:
        _check_quotas_after_create(store, job, settings)
    except ApiError:
        store.remove(job)
        raise
    return job


def _check_quotas_after_create(store: JobStore, job: JobRecord, settings: JobsSettings) -> None:
    """Count the key's jobs with ``job`` stored: over a quota, the caller removes it. Counted after the create,
    two creations racing on two ingress replicas each see the other (the store is read-after-write), so both may
    be refused but never both kept past a quota; within a replica the owner's lock orders them. The key's oldest
    ended jobs past ``jobs.max_jobs_per_key`` are evicted."""
    jobs = store.owned(job.owner)
    others = [other for other in jobs if other.id != job.id]
    _check_quotas(others, job.segments, settings)
    excess = len(jobs) - settings.max_jobs_per_key
    if excess > 0:
        ended = sorted((other for other in others if other.is_final), key=lambda other: (other.finished_at or 0, other.id))
        for evicted in ended[:excess]:
            store.remove(evicted)
            logger.info("Job %s of owner %s evicted: the key keeps %d jobs (jobs.max_jobs_per_key)", evicted.id,
                        job.owner, settings.max_jobs_per_key)


def _check_quotas(others: list[JobRecord], segments: int, settings: JobsSettings) -> None:
    """429 when a job of ``segments`` more would take the key past its active jobs or waiting segments."""
    active = [other for other in others if not other.is_final]
    if len(active) + 1 > settings.max_active_jobs_per_key:
        raise ApiError(429, f"This key has {len(active)} jobs queued or running; the limit is "
                       f"{settings.max_active_jobs_per_key} (jobs.max_active_jobs_per_key). Wait for one to end, or "
                       "cancel one (DELETE /v1/video/jobs/{id})", code="job_quota_exceeded")
    waiting = sum(other.segments - other.recorded for other in active)
    if waiting + segments > settings.max_queued_segments_per_key:
        raise ApiError(429, f"This key has {waiting} segments waiting; with this job's {segments} that is over the "
                       f"{settings.max_queued_segments_per_key} allowed (jobs.max_queued_segments_per_key)",
                       code="job_quota_exceeded")


def job_not_found(job_id: str) -> ApiError:
    return ApiError(404, f"job_id: no job {job_id!r} here for this key (unknown, expired, or another key's)",
                    error_type="not_found_error", param="job_id", code="job_not_found")


def job_body(job: JobRecord, page: list[SegmentResult] | None = None, *, next_after: int | None = None,
             base: str = "") -> dict[str, Any]:
    """The job as ``GET`` answers it: state, progress and timings (the record's summary: no result is read for
    them), the final answer, and one page of recorded segments (``page``, by index) with their events as the
    page's timeline; ``next_after`` is the next page's ``after`` (``None``: the last). ``base`` is the app's
    root path, for the thumbnail links."""
    now = time.time()
    end = job.finished_at or now
    body: dict[str, Any] = {
        "id": job.id,
        "object": "video.job",
        "state": job.state.value,
        "reason": job.reason,
        "file_id": job.file_id,
        "filename": job.filename,
        "question": job.question,
        "duration_s": job.duration_s,
        "segment_s": job.segment_s,
        "frames_per_segment": job.frames_per_segment,
        "fps": job.fps,
        "progress": {"segments": job.segments, "done": job.done, "failed": job.failed,
                     "left": job.segments - job.done - job.failed},
        "result_bytes": job.result_bytes,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "expires_at": job.expires_at,
        "timings": {
            "queued_s": round((job.started_at or end) - job.created_at, 3),
            "wall_s": round(end - job.created_at, 3),
            "decode_s": round(job.decode_s, 3),
            "inference_s": round(job.inference_s, 3),
            "final_inference_s": round(job.final_inference_s, 3) if job.final_inference_s is not None else None,
        },
        "final": (
            {"answer": job.final_answer, "usage": job.final_usage, "served_by": job.final_served_by,
             "timeline_events_used": job.timeline_events_used}
            if job.final_answer is not None else None
        ),
    }
    if page is not None:
        linked = [with_thumbnail_links(result, job.id, base) for result in page]
        body["timeline"] = in_time_order(event for result in linked for event in result["events"])
        body["segments"] = [_without_events(result) for result in linked]
        body["next_after"] = next_after
        body["has_more"] = next_after is not None
    return body


def with_thumbnail_links(result: SegmentResult, job_id: str, base: str) -> dict[str, Any]:
    """A recorded result's JSON with a link to each thumbnail it names (its middle frame's, and each event's frame's)."""

    def link(frame: int) -> str:
        return f"{base}/v1/video/jobs/{job_id}/thumbnails/{result.index}/{frame}"

    linked = result.to_json()
    if result.thumbnail_frame is not None:
        linked["thumbnail_url"] = link(result.thumbnail_frame)
    linked["events"] = [{**event, "thumbnail_url": link(event["frame"])} if "frame" in event else event
                        for event in result.events]
    return linked


def _without_events(result: dict[str, Any]) -> dict[str, Any]:
    """A segment's result without its events (the page's timeline holds them): their count instead."""
    return {key: value for key, value in result.items() if key != "events"} | {"events": len(result.get("events", []))}


def job_list_body(jobs: list[JobRecord]) -> dict[str, Any]:
    """The key's jobs without their results; each one's progress is its record's summary (no result is read)."""
    data = []
    for job in jobs:
        data.append({
            "id": job.id, "object": "video.job", "state": job.state.value, "reason": job.reason, "file_id": job.file_id,
            "filename": job.filename, "question": job.question, "duration_s": job.duration_s,
            "progress": {"segments": job.segments, "recorded": job.recorded, "left": job.segments - job.recorded},
            "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at,
            "expires_at": job.expires_at,
        })
    return {"object": "list", "data": data}


def deleted_job_body(job: JobRecord) -> dict[str, Any]:
    return {"id": job.id, "object": "video.job", "deleted": True, "state": job.state.value}
