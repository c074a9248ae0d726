"""OpenAI chat messages -> a decoded :class:`GenerationRequest`, under the configured limits.

Runs in the ingress, so every bad input fails here with an :class:`ApiError`
and never reaches a model replica.
"""

import re

from deployments.config import AppConfig
from deployments.errors import ApiError
from deployments.openai_schema import ChatCompletionRequest, ChatMessageIn, ImageUrlContent, TextContent
from models import media
from models.remote_media import fetch_media
from models.video import FrameSelection, sample_video
from models.base import ChatMessage, ContentPart, GenerationRequest, ImagePart, TextPart, VideoPart

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


def to_generation_request(request: ChatCompletionRequest, config: AppConfig) -> GenerationRequest:
    """Check limits, decode every image and video, and build the model's request.

    Blocking (decodes media): call it off the event loop.
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
    messages = tuple(
        _translate_message(message, f"messages[{index}]", config) for index, message in enumerate(request.messages)
    )
    temperature = request.temperature if request.temperature is not None else config.generation.default_temperature
    return GenerationRequest(
        messages=messages,
        max_new_tokens=max_tokens,
        temperature=temperature,
        seed=request.seed,
        max_prompt_tokens=limits.max_prompt_tokens,
    )


def _translate_message(message: ChatMessageIn, where: str, config: AppConfig) -> ChatMessage:
    if isinstance(message.content, str):
        return ChatMessage(role=message.role, content=(TextPart(message.content),))
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
    parts: list[ContentPart] = []
    for index, part in enumerate(message.content):
        param = f"{where}.content[{index}]"
        if isinstance(part, TextContent):
            parts.append(TextPart(part.text))
        elif isinstance(part, ImageUrlContent):
            parts.append(_decode_image_part(part.image_url.url, param, config))
        else:
            parts.append(_decode_video_part(part.video_url.url, param, config))
    return ChatMessage(role=message.role, content=tuple(parts))


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


def _decode_image_part(url: str, param: str, config: AppConfig) -> ImagePart:
    try:
        data_url = _resolve_url(url, media.IMAGE_MIME_TYPES, config)
        pixels = media.decode_image(
            data_url.payload,
            max_pixels=config.limits.max_image_pixels,
            target_pixels=config.limits.max_pixels_per_frame,
        )
    except media.MediaError as error:
        raise media_error_to_api_error(error, f"{param}.image_url") from error
    return ImagePart(pixels=pixels)


def _decode_video_part(url: str, param: str, config: AppConfig) -> VideoPart:
    try:
        data_url = _resolve_url(url, media.VIDEO_MIME_TYPES, config)
        sampled = sample_video(
            data_url.payload, FrameSelection(num_frames=config.limits.video_frames), config.limits.video_limits()
        )
    except media.MediaError as error:
        raise media_error_to_api_error(error, f"{param}.video_url") from error
    return VideoPart(frames=sampled.frames, timestamps_s=sampled.timestamps_s)
