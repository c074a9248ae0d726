"""OpenAI chat messages -> a decoded :class:`GenerationRequest`, under the configured limits.

Runs in the ingress, so every bad input fails here with an :class:`ApiError`
and never reaches a model replica.
"""

import dataclasses
import re
import threading
from typing import Callable

from deployments.config.app_config import AppConfig
from deployments.edge.chat_parameters import decoding_options
from deployments.edge.media_budget import PlannedPart, check_media_budget, check_part_count
from deployments.edge.openai_schema import (
    ChatCompletionRequest,
    ChatMessageIn,
    FileContent,
    ImageUrlContent,
    TextContent,
    VideoUrlContent,
)
from deployments.errors import ApiError
from deployments.files.service import FILE_ID_PREFIX, FilesService
from deployments.files.store import ANONYMOUS, FileRecord
from models.media import inputs as media
from models.media.identity import content_sha256, media_source
from models.media.remote import fetch_media
from models.media.video import FrameSelection, SampledVideo, VideoInfo, probe_video, sample_video
from models.media.visual_tokens import VisualTokenGeometry
from models.requests import ChatMessage, ContentPart, GenerationRequest, ImagePart, TextPart, VideoPart

_STATUS_BY_MEDIA_ERROR: tuple[tuple[type[media.MediaError], int], ...] = (
    (media.UnsupportedMediaTypeError, 415),
    (media.MediaTooLargeError, 413),
    (media.InvalidDataUrlError, 400),
    (media.MediaDecodeError, 400),
)


def media_error_to_api_error(error: media.MediaError, param: str) -> ApiError:
    """The status that fits the error, and a code a client can branch on (``AudioOnlyError`` -> ``audio_only``)."""
    code = re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__.removesuffix("Error")).lower()
    for error_class, status in _STATUS_BY_MEDIA_ERROR:
        if isinstance(error, error_class):
            return ApiError(status, f"{param}: {error}", param=param, code=code)
    return ApiError(400, f"{param}: {error}", param=param, code=code)


def to_generation_request(
    request: ChatCompletionRequest,
    config: AppConfig,
    geometry: VisualTokenGeometry = VisualTokenGeometry(),
    *,
    files: FilesService | None = None,
    owner: str = ANONYMOUS,
    stop: threading.Event | None = None,
) -> GenerationRequest:
    """Check limits, price the media from their headers, decode every image and video, build the model's request.

    Blocking (decodes media, reads the file store): call it off the event loop. Nothing is decoded until
    the whole request's media fit its budget (:mod:`deployments.edge.media_budget`). Uploaded files are
    ``owner``'s only; a video file's frames come from the frame cache when they are there. The videos share
    one decode budget (``limits.max_decoded_frames`` and ``max_decoded_pixels``); setting ``stop`` (the
    request ended) stops their decode at its next frame.
    """
    limits = config.limits
    if len(request.messages) > limits.max_messages:
        raise ApiError(
            413,
            f"messages: {len(request.messages)} messages; the limit is {limits.max_messages}",
            param="messages",
        )
    max_tokens = request.requested_max_tokens or limits.default_max_tokens
    if max_tokens > limits.max_tokens:
        raise ApiError(
            400,
            f"max_tokens: {max_tokens} requested; the limit is {limits.max_tokens}",
            param="max_tokens",
        )
    if (request.n or 1) > limits.max_choices:
        raise ApiError(400, f"n: {request.n} choices asked; the limit is {limits.max_choices} (limits.max_choices)", param="n")
    options = decoding_options(request, max_tokens=max_tokens, limits=limits)  # before any media is decoded
    for index, message in enumerate(request.messages):
        _check_message(message, f"messages[{index}]", config)
    media_parts = [
        (f"messages[{index}].content[{part_index}]", part)
        for index, message in enumerate(request.messages)
        if not isinstance(message.content, str)
        for part_index, part in enumerate(message.content)
        if not isinstance(part, TextContent)
    ]
    check_part_count(len(media_parts), limits)
    sources = _MediaSources(config, files, owner)
    resolved = {param: sources.resolve(part, param) for param, part in media_parts}
    check_media_budget([plan for plan, _ in resolved.values()], limits, geometry)
    decoded_once = {id(decode): plan for plan, decode in resolved.values()}  # a file named twice is decoded once
    sources.budget = limits.decode_budget(
        targets=sum(plan.frames for plan in decoded_once.values() if plan.kind == "video"), stop=stop
    )
    messages = []
    for index, message in enumerate(request.messages):
        where = f"messages[{index}]"
        if isinstance(message.content, str):
            messages.append(ChatMessage(role=message.role, content=(TextPart(message.content),)))
            continue
        parts: list[ContentPart] = []
        for part_index, part in enumerate(message.content):
            param = f"{where}.content[{part_index}]"
            if isinstance(part, TextContent):
                parts.append(TextPart(part.text))
            else:
                _, decode = resolved[param]
                parts.append(decode())
        messages.append(ChatMessage(role=message.role, content=tuple(parts)))
    temperature = request.temperature if request.temperature is not None else config.generation.default_temperature
    return GenerationRequest(
        messages=tuple(messages),
        max_new_tokens=max_tokens,
        temperature=temperature,
        seed=request.seed,
        max_prompt_tokens=limits.max_prompt_tokens,
        options=options,
    )


def _check_message(message: ChatMessageIn, where: str, config: AppConfig) -> None:
    if isinstance(message.content, str):
        return
    limits = config.limits
    if len(message.content) > limits.max_content_parts:
        raise ApiError(
            413,
            f"{where}.content: {len(message.content)} parts; the limit is {limits.max_content_parts}",
            param=f"{where}.content",
        )
    if message.role != "user" and any(not isinstance(part, TextContent) for part in message.content):
        raise ApiError(
            400, f"{where}: only user messages may carry images or videos", param=f"{where}.content"
        )


def _resolve_url(url: str, allowed_mime_types: frozenset[str], config: AppConfig) -> media.DataUrl:
    """A data URL, or (only under ``media.remote_url_allow_list``) a fetched http(s) URL."""
    if url.startswith("data:") or not config.media.remote_url_allow_list:
        return media.parse_data_url(url, allowed_mime_types=allowed_mime_types)
    return fetch_media(
        url,
        allow_list=config.media.remote_url_allow_list,
        allowed_mime_types=allowed_mime_types,
        max_bytes=config.limits.max_upload_bytes,
        timeout_s=config.media.remote_fetch_timeout_s,
    )


Decode = Callable[[], ContentPart]


def _file_id(part: ImageUrlContent | VideoUrlContent | FileContent) -> str | None:
    """The uploaded file a part names, if it names one."""
    if isinstance(part, FileContent):
        return part.file.file_id
    url = part.image_url.url if isinstance(part, ImageUrlContent) else part.video_url.url
    return url if url.startswith(FILE_ID_PREFIX) else None


def _once(decode: Decode) -> Decode:
    """``decode``, run the first time only (the parts of one request are decoded one after another)."""
    done: list[ContentPart] = []

    def run() -> ContentPart:
        if not done:
            done.append(decode())
        return done[0]

    return run


class _MediaSources:
    """Each media part's plan (what decoding it would produce, from its header) and how to decode it."""

    def __init__(self, config: AppConfig, files: FilesService | None, owner: str) -> None:
        self._config = config
        self._files = files
        self._owner = owner
        self._by_file: dict[str, tuple[PlannedPart, Decode]] = {}  # a file named by several parts: read and decoded once
        self.budget = config.limits.decode_budget(targets=0)  # set for the whole request once every part is planned

    def resolve(self, part: ImageUrlContent | VideoUrlContent | FileContent, param: str) -> tuple[PlannedPart, Decode]:
        file_id = _file_id(part)
        if file_id is None:
            return self._resolve(part, param)
        if file_id not in self._by_file:
            plan, decode = self._resolve(part, param)
            self._by_file[file_id] = plan, _once(decode)
        plan, decode = self._by_file[file_id]
        return dataclasses.replace(plan, param=param), decode  # counted in the budget for each part that shows it

    def _resolve(self, part: ImageUrlContent | VideoUrlContent | FileContent, param: str) -> tuple[PlannedPart, Decode]:
        if isinstance(part, FileContent):
            where = f"{param}.file"
            if part.file.file_data is not None or not part.file.file_id:
                raise ApiError(
                    400, f"{where}: send file_id (upload with POST /v1/files first); file_data is not taken here",
                    param=f"{where}.file_id",
                )
            record = self._file_record(part.file.file_id, f"{where}.file_id")
            if record.kind == "video":
                return self._video_file(record, f"{where}.file_id")
            return self._image(self._image_file(record, f"{where}.file_id"), where, record.sha256)
        if isinstance(part, ImageUrlContent):
            where = f"{param}.image_url"
            url = part.image_url.url
            if url.startswith(FILE_ID_PREFIX):
                record = self._file_record(url, where)
                return self._image(self._image_file(record, where), where, record.sha256)
            try:
                payload = _resolve_url(url, media.IMAGE_MIME_TYPES, self._config).payload
            except media.MediaError as error:
                raise media_error_to_api_error(error, where) from error
            return self._image(payload, where, content_sha256(payload))
        where = f"{param}.video_url"
        url = part.video_url.url
        if url.startswith(FILE_ID_PREFIX):
            return self._video_file(self._files_or_refuse(where).video_record(self._owner, url, where), where)
        try:
            payload = _resolve_url(url, media.VIDEO_MIME_TYPES, self._config).payload
        except media.MediaError as error:
            raise media_error_to_api_error(error, where) from error
        return self._video_bytes(payload, where)

    def _files_or_refuse(self, where: str) -> FilesService:
        if self._files is None:
            raise ApiError(400, f"{where}: file ids are not served by this endpoint", param=where)
        return self._files

    def _file_record(self, file_id: str, where: str) -> FileRecord:
        return self._files_or_refuse(where).record(self._owner, file_id, where)

    def _image_file(self, record: FileRecord, where: str) -> bytes:
        return self._files_or_refuse(where).image_bytes(record, where, self._config.limits.max_image_bytes)

    def _image(self, payload: bytes, where: str, sha256: str) -> tuple[PlannedPart, Decode]:
        limits = self._config.limits
        if len(payload) > limits.max_image_bytes:
            raise ApiError(413, f"{where}: the image is {len(payload)} bytes; the limit is {limits.max_image_bytes} "
                           "(limits.max_image_bytes)", param=where, code="media_too_large")
        try:
            width, height = media.open_image(payload).size
        except media.MediaError as error:
            raise media_error_to_api_error(error, where) from error
        if width * height > limits.max_image_pixels:
            raise media_error_to_api_error(media.MediaTooLargeError(
                f"Image is {width}x{height} = {width * height} pixels; the limit is {limits.max_image_pixels} pixels"
            ), where)

        def decode() -> ContentPart:
            try:
                pixels = media.decode_image(payload, max_pixels=limits.max_image_pixels, target_pixels=limits.max_pixels_per_frame)
            except media.MediaError as error:
                raise media_error_to_api_error(error, where) from error
            return ImagePart(pixels=pixels, source=media_source(self._owner, sha256))

        return PlannedPart(where, "image", 1, min(width * height, limits.max_pixels_per_frame), source_pixels=width * height), decode

    def _video_bytes(self, payload: bytes, where: str) -> tuple[PlannedPart, Decode]:
        limits = self._config.limits
        selection, video_limits = FrameSelection(num_frames=limits.video_frames), limits.video_limits()
        return self._video(
            lambda: probe_video(payload, video_limits),
            lambda: sample_video(payload, selection, video_limits, self.budget),
            where,
            content_sha256(payload),
        )

    def _video_file(self, record: FileRecord, where: str) -> tuple[PlannedPart, Decode]:
        """An uploaded video: its frames from the cache when they are there, else probed now, decoded later."""
        files, limits = self._files, self._config.limits
        selection, video_limits = FrameSelection(num_frames=limits.video_frames), limits.video_limits()
        cached = files.cached_frames(record, selection, video_limits)
        if cached is not None:
            source = media_source(self._owner, record.sha256)
            return self._video_plan(cached.info, where), lambda: VideoPart(cached.frames, cached.timestamps_s, source)
        return self._video(
            lambda: files.probe(record, video_limits),
            lambda: files.sample(record, selection, video_limits, self.budget),
            where,
            record.sha256,
        )

    def _video(
        self, probe: Callable[[], VideoInfo], sample: Callable[[], SampledVideo], where: str, sha256: str
    ) -> tuple[PlannedPart, Decode]:
        """Probe now (the plan, from the header), sample later; a media error from either is the part's 4xx."""
        try:
            info = probe()
        except media.MediaError as error:
            raise media_error_to_api_error(error, where) from error

        def decode() -> ContentPart:
            try:
                sampled = sample()
            except media.MediaError as error:
                raise media_error_to_api_error(error, where) from error
            return VideoPart(frames=sampled.frames, timestamps_s=sampled.timestamps_s, source=media_source(self._owner, sha256))

        return self._video_plan(info, where), decode

    def _video_plan(self, info: VideoInfo, where: str) -> PlannedPart:
        limits = self._config.limits
        return PlannedPart(where, "video", limits.video_frames, min(info.width * info.height, limits.max_pixels_per_frame))
