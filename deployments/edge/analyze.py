"""``POST /v1/analyze``: a video file and a question in, an answer with its frames, timings and tokens out.

:func:`prepare_analysis` does the request's first half for the route in :mod:`deployments.edge.ingress`: it
streams the upload to a temporary file, checks the form fields (:func:`parse_analyze_fields`) and samples
the frames off the event loop. The route then asks the replica groups, for the whole answer
(:func:`analyze_body`) or, with ``stream=true``, for events as the answer is generated
(:mod:`deployments.edge.analyze_stream`).
"""

import asyncio
import dataclasses
import functools
import json
import logging
import math
import time
import uuid
from typing import Any, Callable

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request

from deployments.config.app_config import AppConfig
from deployments.config.limits import LimitsSettings
from deployments.edge.chat_parameters import check_schema_size
from deployments.edge.chat_translation import media_error_to_api_error
from deployments.edge.json_body import MAX_JSON_DEPTH, json_depth
from deployments.edge.off_loop import run_off_loop
from deployments.edge.openai_schema import SEED_MAX
from deployments.errors import ApiError, describe_validation_errors
from deployments.files.service import FilesService
from deployments.files.uploads import receive_upload
from deployments.replica.protocol import ReplicaAnswer, ServedBy
from models.media import inputs as media
from models.media.decode_budget import DecodeBudget
from models.media.identity import media_source
from models.media.thumbnails import frame_thumbnails
from models.media.video import FrameSelection, SampledVideo, sample_video
from models.requests import ChatMessage, DecodingOptions, GenerationRequest, ResponseFormat, TextPart, VideoPart

logger = logging.getLogger(__name__)

VIDEO_FIELD = "video"
TEXT_FIELDS = frozenset(
    {"question", "frames", "fps", "max_tokens", "temperature", "seed", "model", "file_id", "stream", "thumbnails",
     "start_s", "end_s", "json_schema"}
)
# What a video part may declare itself as; anything else (text/plain, image/png, ...) is a 415.
ACCEPTED_PART_TYPES = ("video/", "application/octet-stream", "application/x-matroska")


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
    stream: bool = Field(default=False, description="Answer with server-sent events as the answer is generated.")
    thumbnails: bool = Field(default=False, description="Add each sampled frame as a small JPEG data URL.")
    start_s: float = Field(default=0.0, ge=0, description="Sample from this time (s) on: a part of a long video.")
    end_s: float | None = Field(default=None, gt=0, description="Sample up to this time (s); default: the video's end.")
    json_schema: str | None = Field(
        default=None, description="The answer as JSON valid against this JSON schema (the schema as JSON text)."
    )

    @field_validator("question")
    @classmethod
    def _not_blank(cls, question: str) -> str:
        return checked_question(question)

    @field_validator("fps", "start_s", "end_s")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        return finite_or_none(value)


def checked_question(question: str) -> str:
    """A question stripped of surrounding blanks; an empty one is refused (``/v1/analyze``, a job)."""
    if not question.strip():
        raise ValueError("the question is empty; ask something about the video")
    return question.strip()


def finite_or_none(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


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
    if parsed.end_s is not None and parsed.end_s <= parsed.start_s:
        raise ApiError(400, f"end_s: {parsed.end_s:g} s is not after start_s ({parsed.start_s:g} s)", param="end_s")
    if parsed.max_tokens is not None and parsed.max_tokens > limits.max_tokens:
        raise ApiError(
            400, f"max_tokens: {parsed.max_tokens} requested; the limit is {limits.max_tokens}", param="max_tokens"
        )
    return parsed


def frame_selection(fields: AnalyzeFields, limits: LimitsSettings) -> FrameSelection:
    window = {"start_s": fields.start_s, "end_s": fields.end_s}
    if fields.fps is not None:
        return FrameSelection(fps=fields.fps, **window)
    return FrameSelection(num_frames=fields.frames or limits.video_frames, **window)


def answer_format(fields: AnalyzeFields, limits: LimitsSettings) -> DecodingOptions:
    """The ``json_schema`` field as structured output, checked as ``response_format``'s schema is."""
    if fields.json_schema is None:
        return DecodingOptions()
    try:
        schema = json.loads(fields.json_schema)
    except ValueError as error:
        raise ApiError(400, f"json_schema: not JSON ({error})", param="json_schema") from error
    except RecursionError as error:  # Python's parser recurses a level at a time: '[' * 1200 ends here
        raise ApiError(400, f"json_schema: nests deeper than {MAX_JSON_DEPTH} levels; flatten it",
                       param="json_schema") from error
    if json_depth(schema, limit=MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ApiError(400, f"json_schema: nests deeper than {MAX_JSON_DEPTH} levels; flatten it", param="json_schema")
    if not isinstance(schema, dict):
        raise ApiError(400, "json_schema: a JSON schema is an object", param="json_schema")
    encoded = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    check_schema_size(schema, encoded, limits, param="json_schema", where="json_schema")
    return DecodingOptions(response_format=ResponseFormat(kind="json_schema", schema_json=encoded))


def check_part_type(content_type: str) -> None:
    if content_type and not content_type.startswith(ACCEPTED_PART_TYPES):
        raise ApiError(
            415,
            f"The file part is {content_type!r}; send a video (video/mp4, video/webm, video/x-matroska, "
            "video/quicktime, video/x-msvideo) or application/octet-stream",
            param=VIDEO_FIELD,
            code="unsupported_media_type",
        )


@dataclasses.dataclass(frozen=True)
class PreparedAnalysis:
    """A checked ``/v1/analyze`` request with its frames sampled, ready to send to a replica group."""

    fields: AnalyzeFields
    filename: str
    size_bytes: int
    sampled: SampledVideo
    cache_hit: bool | None  # None: an upload, not a file
    started: float  # perf_counter at the request's start
    upload_s: float
    generation_request: GenerationRequest

    def video_body(self) -> dict[str, Any]:
        video = {"filename": self.filename, "size_bytes": self.size_bytes, **self.sampled.info.to_dict()}
        if self.fields.file_id is not None:
            video["file_id"] = self.fields.file_id
        return video

    def timings(self, inference_s: float | None = None) -> dict[str, Any]:
        timings: dict[str, Any] = {
            "upload_s": round(self.upload_s, 4),
            "decode_s": 0.0 if self.cache_hit else round(self.sampled.decode_seconds, 4),
        }
        if inference_s is not None:
            timings["inference_s"] = round(inference_s, 4)
            timings["total_s"] = round(time.perf_counter() - self.started, 4)
        if self.cache_hit is not None:
            timings["frame_cache"] = "hit" if self.cache_hit else "miss"
        return timings

    def sampled_frames_body(self) -> dict[str, Any]:
        sampled = self.sampled
        body: dict[str, Any] = {
            "sampled_count": len(sampled.timestamps_s),
            "sampled_timestamps_s": list(sampled.timestamps_s),
            "width": int(sampled.frames.shape[2]),
            "height": int(sampled.frames.shape[1]),
            "effective_fps": sampled.effective_fps,
            "seeks": sampled.seeks,
            "decoded_frames": sampled.decoded_frames,
            "decoded_pixels": sampled.decoded_pixels,
            "substituted": sampled.substituted,
        }
        if self.fields.thumbnails:
            body["thumbnails"] = self.thumbnails
        return body

    @functools.cached_property
    def thumbnails(self) -> list[str]:
        """Encoded once: a streamed answer sends them in its ``start`` event and again in its ``done`` body."""
        return frame_thumbnails(self.sampled.frames)


def analyze_body(prepared: PreparedAnalysis, answer: ReplicaAnswer, *, request_id: str, model_id: str) -> dict[str, Any]:
    """The whole answer: the text, the frames the model saw, the video, timings, tokens and who served it."""
    result = answer.result
    used_timestamps = list(answer.used_timestamps_s or prepared.sampled.timestamps_s)
    return {
        "id": f"analyze-{uuid.uuid4().hex}",
        "object": "video.analysis",
        "request_id": request_id,
        "model": model_id,
        "answer": result.text,
        "finish_reason": result.finish_reason,
        "video": prepared.video_body(),
        "frames": {
            "count": len(used_timestamps),
            "timestamps_s": used_timestamps,
            "pixels_per_frame_used": answer.used.max_pixels_per_frame,
            **prepared.sampled_frames_body(),
        },
        "timings": prepared.timings(answer.inference_seconds),
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.total_tokens,
        },
        "served_by": served_by_body(answer.served_by),
        "out_of_memory_retries": [retry.to_dict() for retry in answer.oom_retries],
    }


def served_by_body(served_by: ServedBy) -> dict[str, str]:
    return {"group": served_by.group, "replica": served_by.replica, "precision": served_by.precision, "device": served_by.device}


async def prepare_analysis(
    request: Request,
    *,
    request_id: str,
    config: AppConfig,
    files: FilesService,
    owner: str,
    check_served_model: Callable[[str | None], None],
) -> PreparedAnalysis:
    """Receive, check and sample a ``/v1/analyze`` request; every bad input fails here with its 4xx.

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
        options = answer_format(fields, limits)  # a bad schema is refused before anything is decoded
        if upload.path is not None and fields.file_id is not None:
            raise ApiError(400, "Send the video part or file_id, not both", param="file_id")
        if upload.path is None and fields.file_id is None:
            raise ApiError(
                400,
                f"No video was sent; send it as a file in the field {VIDEO_FIELD!r} (curl -F {VIDEO_FIELD}=@clip.mp4) "
                "or name an uploaded one with file_id",
                param=VIDEO_FIELD,
            )
        budget = limits.decode_budget(targets=selection.num_frames or limits.max_video_frames)
        if upload.path is not None:
            check_part_type(upload.content_type)
            filename, size_bytes, content_sha256 = upload.filename, upload.size_bytes, upload.sha256
            sampled = await _sampled(sample_video, upload.path, selection, limits.video_limits(), budget=budget, param=VIDEO_FIELD)
        else:
            record = await asyncio.to_thread(files.video_record, owner, fields.file_id, "file_id")
            filename, size_bytes, content_sha256 = record.filename, record.bytes, record.sha256
            sampled = await asyncio.to_thread(files.cached_frames, record, selection, limits.video_limits())
            cache_hit = sampled is not None
            if sampled is None:
                sampled = await _sampled(files.sample, record, selection, limits.video_limits(), budget=budget, param="file_id")
    logger.info(
        "Request %s: %r (%d bytes, %s/%s, %.1f s) sampled to %d frames of %dx%d in %.3f s (%d seeks, %d decoded, "
        "%d at the nearest decodable frame for the decode budget%s)",
        request_id, filename or "(no name)", size_bytes, sampled.info.container, sampled.info.codec,
        sampled.info.duration_s, len(sampled.timestamps_s), sampled.frames.shape[2], sampled.frames.shape[1],
        sampled.decode_seconds, sampled.seeks, sampled.decoded_frames, sampled.substituted,
        ", from the frame cache" if cache_hit else "",
    )
    video = VideoPart(frames=sampled.frames, timestamps_s=sampled.timestamps_s, source=media_source(owner, content_sha256))
    generation_request = GenerationRequest(
        messages=(ChatMessage(role="user", content=(video, TextPart(fields.question))),),
        max_new_tokens=fields.max_tokens or limits.default_max_tokens,
        temperature=fields.temperature if fields.temperature is not None else config.generation.default_temperature,
        seed=fields.seed,
        max_prompt_tokens=limits.max_prompt_tokens,
        options=options,
    )
    return PreparedAnalysis(
        fields=fields,
        filename=filename,
        size_bytes=size_bytes,
        sampled=sampled,
        cache_hit=cache_hit,
        started=started,
        upload_s=received - started,
        generation_request=generation_request,
    )


async def _sampled(
    sample: Callable[..., SampledVideo], *args: Any, budget: DecodeBudget, param: str
) -> SampledVideo:
    try:
        return await run_off_loop(budget.stop, sample, *args, budget)
    except media.MediaError as error:
        raise media_error_to_api_error(error, param) from error
