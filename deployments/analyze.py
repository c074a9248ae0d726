"""``POST /v1/analyze``: a video file and a question in, an answer with its frames, timings and tokens out.

:func:`analyze_upload` does the whole request for the route in :mod:`deployments.ingress`: it streams
the upload to a temporary file, checks the form fields (:func:`parse_analyze_fields`), samples the
frames off the event loop, asks the replica groups, and builds the answer (:func:`analyze_body`).
"""

import asyncio
import logging
import math
import time
import uuid
from typing import Any, Awaitable, Callable

from starlette.requests import Request

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from deployments.chat_translation import media_error_to_api_error
from deployments.config import AppConfig, LimitsSettings
from deployments.errors import ApiError, describe_validation_errors
from deployments.openai_schema import SEED_MAX
from deployments.replica_protocol import ReplicaAnswer
from deployments.files_api import FilesService
from deployments.uploads import receive_upload
from memory.cleanup import return_freed_heap
from models import media
from models.requests import ChatMessage, GenerationRequest, TextPart, VideoPart
from models.video import FrameSelection, SampledVideo, sample_video

logger = logging.getLogger(__name__)

VIDEO_FIELD = "video"
TEXT_FIELDS = frozenset({"question", "frames", "fps", "max_tokens", "temperature", "seed", "model", "file_id"})
# What a video part may declare itself as; anything else (text/plain, image/png, ...) is a 415.
ACCEPTED_PART_TYPES = ("video/", "application/octet-stream", "application/x-matroska")
# After an upload this large, freed heap pages go back to the OS (a few ms).
_TRIM_AFTER_UPLOAD_BYTES = 16 * 1024 * 1024


class AnalyzeFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(description="What to ask about the video.")
    frames: int | None = Field(default=None, ge=1, description="Frames spread uniformly over the video.")
    fps: float | None = Field(default=None, gt=0, description="Or: one frame every 1/fps seconds, capped.")
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX)
    model: str | None = None
    file_id: str | None = Field(default=None, description="An uploaded video (POST /v1/files), instead of a video part.")

    @field_validator("question")
    @classmethod
    def _not_blank(cls, question: str) -> str:
        if not question.strip():
            raise ValueError("the question is empty; ask something about the video")
        return question.strip()

    @field_validator("fps")
    @classmethod
    def _finite(cls, fps: float | None) -> float | None:
        if fps is not None and not math.isfinite(fps):
            raise ValueError("fps must be a finite number")
        return fps


def parse_analyze_fields(fields: dict[str, str], limits: LimitsSettings) -> AnalyzeFields:
    if "question" not in fields:
        raise ApiError(
            400, "No question was sent; add a form field 'question' (curl -F question='...')", param="question"
        )
    try:
        parsed = AnalyzeFields.model_validate(fields)
    except pydantic.ValidationError as error:
        described = describe_validation_errors(error.errors())
        message = "Invalid form fields: " + "; ".join(f"{param}: {text}" for param, text in described)
        raise ApiError(400, message, param=described[0][0]) from error
    if parsed.frames is not None and parsed.fps is not None:
        raise ApiError(400, "Send either frames or fps, not both", param="fps")
    if parsed.frames is not None and parsed.frames > limits.max_video_frames:
        raise ApiError(
            400,
            f"frames: {parsed.frames} asked; the limit is {limits.max_video_frames} (limits.max_video_frames)",
            param="frames",
        )
    if parsed.fps is not None and parsed.fps > limits.max_video_fps:
        raise ApiError(
            400, f"fps: {parsed.fps:g} asked; the limit is {limits.max_video_fps:g} (limits.max_video_fps)", param="fps"
        )
    if parsed.max_tokens is not None and parsed.max_tokens > limits.max_tokens:
        raise ApiError(
            400, f"max_tokens: {parsed.max_tokens} requested; the limit is {limits.max_tokens}", param="max_tokens"
        )
    return parsed


def frame_selection(fields: AnalyzeFields, limits: LimitsSettings) -> FrameSelection:
    if fields.fps is not None:
        return FrameSelection(fps=fields.fps)
    return FrameSelection(num_frames=fields.frames or limits.video_frames)


def check_part_type(content_type: str) -> None:
    if content_type and not content_type.startswith(ACCEPTED_PART_TYPES):
        raise ApiError(
            415,
            f"The file part is {content_type!r}; send a video (video/mp4, video/webm, video/x-matroska, "
            "video/quicktime, video/x-msvideo) or application/octet-stream",
            param=VIDEO_FIELD,
            code="unsupported_media_type",
        )


def analyze_body(
    *,
    request_id: str,
    model_id: str,
    filename: str,
    size_bytes: int,
    sampled: SampledVideo,
    answer: ReplicaAnswer,
    timings: dict[str, Any],
) -> dict[str, Any]:
    result = answer.result
    used_timestamps = list(answer.used_timestamps_s or sampled.timestamps_s)
    return {
        "id": f"analyze-{uuid.uuid4().hex}",
        "object": "video.analysis",
        "request_id": request_id,
        "model": model_id,
        "answer": result.text,
        "finish_reason": result.finish_reason,
        "video": {"filename": filename, "size_bytes": size_bytes, **sampled.info.to_dict()},
        "frames": {
            "count": len(used_timestamps),
            "timestamps_s": used_timestamps,
            "sampled_count": len(sampled.timestamps_s),
            "width": int(sampled.frames.shape[2]),
            "height": int(sampled.frames.shape[1]),
            "pixels_per_frame_used": answer.used.max_pixels_per_frame,
            "effective_fps": sampled.effective_fps,
            "seeks": sampled.seeks,
            "decoded_frames": sampled.decoded_frames,
        },
        "timings": {name: round(value, 4) if isinstance(value, float) else value for name, value in timings.items()},
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.total_tokens,
        },
        "served_by": {
            "group": answer.served_by.group,
            "replica": answer.served_by.replica,
            "precision": answer.served_by.precision,
            "device": answer.served_by.device,
        },
        "out_of_memory_retries": [retry.to_dict() for retry in answer.oom_retries],
    }


async def analyze_upload(
    request: Request,
    *,
    request_id: str,
    model_id: str,
    config: AppConfig,
    files: FilesService,
    owner: str,
    check_served_model: Callable[[str | None], None],
    generate: Callable[[GenerationRequest], Awaitable[ReplicaAnswer]],
) -> tuple[dict[str, Any], ReplicaAnswer]:
    """The whole ``/v1/analyze`` request: its answer's body, and the replica's answer (for its headers).

    The video is the multipart part ``video``, or an uploaded file named by ``file_id``; a file's frames
    come from the decoded-frame cache when the same file was sampled the same way before."""
    started = time.perf_counter()
    limits = config.limits
    cache_hit: bool | None = None
    async with receive_upload(
        request,
        file_field=VIDEO_FIELD,
        text_fields=TEXT_FIELDS,
        max_file_bytes=limits.max_upload_bytes,
        max_field_bytes=limits.max_question_bytes,
        directory=config.ingress.upload_dir,
        file_required=False,
    ) as upload:
        received = time.perf_counter()
        fields = parse_analyze_fields(upload.fields, limits)
        check_served_model(fields.model)
        selection = frame_selection(fields, limits)
        if upload.path is not None and fields.file_id is not None:
            raise ApiError(400, "Send the video part or file_id, not both", param="file_id")
        if upload.path is None and fields.file_id is None:
            raise ApiError(
                400,
                f"No video was sent; send it as a file in the field {VIDEO_FIELD!r} (curl -F {VIDEO_FIELD}=@clip.mp4) "
                "or name an uploaded one with file_id",
                param=VIDEO_FIELD,
            )
        if upload.path is not None:
            check_part_type(upload.content_type)
            filename, size_bytes = upload.filename, upload.size_bytes
            sampled = await _sampled(sample_video, upload.path, selection, limits.video_limits(), param=VIDEO_FIELD)
        else:
            record = await asyncio.to_thread(files.video_record, owner, fields.file_id, "file_id")
            filename, size_bytes = record.filename, record.bytes
            sampled = await asyncio.to_thread(files.cached_frames, record, selection, limits.video_limits())
            cache_hit = sampled is not None
            if sampled is None:
                sampled = await _sampled(files.sample, record, selection, limits.video_limits(), param="file_id")
    if upload.size_bytes >= _TRIM_AFTER_UPLOAD_BYTES:
        # The body passed through this process in Serve's message buffers; glibc keeps their pages.
        await asyncio.to_thread(return_freed_heap)
    logger.info(
        "Request %s: %s (%d bytes, %s/%s, %.1f s) sampled to %d frames of %dx%d in %.3f s (%d seeks, %d decoded%s)",
        request_id, filename or "(no name)", size_bytes, sampled.info.container, sampled.info.codec,
        sampled.info.duration_s, len(sampled.timestamps_s), sampled.frames.shape[2], sampled.frames.shape[1],
        sampled.decode_seconds, sampled.seeks, sampled.decoded_frames, ", from the frame cache" if cache_hit else "",
    )
    video = VideoPart(frames=sampled.frames, timestamps_s=sampled.timestamps_s)
    answer = await generate(GenerationRequest(
        messages=(ChatMessage(role="user", content=(video, TextPart(fields.question))),),
        max_new_tokens=fields.max_tokens or limits.default_max_tokens,
        temperature=fields.temperature if fields.temperature is not None else config.generation.default_temperature,
        seed=fields.seed,
        max_prompt_tokens=limits.max_prompt_tokens,
    ))
    timings: dict[str, Any] = {
        "upload_s": received - started,
        "decode_s": 0.0 if cache_hit else sampled.decode_seconds,
        "inference_s": answer.inference_seconds,
        "total_s": time.perf_counter() - started,
    }
    if cache_hit is not None:
        timings["frame_cache"] = "hit" if cache_hit else "miss"
    body = analyze_body(
        request_id=request_id,
        model_id=model_id,
        filename=filename,
        size_bytes=size_bytes,
        sampled=sampled,
        answer=answer,
        timings=timings,
    )
    if fields.file_id is not None:
        body["video"]["file_id"] = fields.file_id
    return body, answer


async def _sampled(sample: Callable[..., SampledVideo], *args: Any, param: str) -> SampledVideo:
    try:
        return await asyncio.to_thread(sample, *args)
    except media.MediaError as error:
        raise media_error_to_api_error(error, param) from error
