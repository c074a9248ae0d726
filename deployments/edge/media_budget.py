"""A request's media, priced from headers and part counts before any frame is decoded.

Per-part limits (an image's pixels, a video's duration and frame size) do not bound a request:
16 messages of 15 tiny clips each pass them all and decode 1920 frames. So the ingress first
resolves every part and reads only its header (image size, video container and stream), plans
what decoding would produce (frames, pixels after scaling, visual tokens), and checks the whole
request against ``limits.max_media_parts``, ``max_request_frames``, ``max_request_pixels`` and
``max_prompt_tokens``, and the images' pixels at their stored size against ``max_request_source_pixels``
(what decoding them costs, before any scaling). A refusal is a 413 naming the figures, in milliseconds.
"""

import dataclasses
from typing import Literal

from deployments.config.limits import LimitsSettings
from deployments.errors import ApiError
from models.media.visual_tokens import VisualTokenGeometry


@dataclasses.dataclass(frozen=True)
class PlannedPart:
    """What decoding one image or video part would produce."""

    param: str
    kind: Literal["image", "video"]
    frames: int  # 1 for an image
    pixels_per_frame: int  # after scaling to max_pixels_per_frame
    source_pixels: int = 0  # an image's pixels at its stored size: what decoding it costs

    def visual_tokens(self, geometry: VisualTokenGeometry) -> int:
        if self.kind == "image":
            return geometry.image_tokens(self.pixels_per_frame)
        return geometry.video_tokens(self.frames, self.pixels_per_frame)


def check_part_count(count: int, limits: LimitsSettings) -> None:
    if count > limits.max_media_parts:
        raise ApiError(
            413,
            f"messages: the request has {count} image and video parts; the limit is {limits.max_media_parts} per request",
            param="messages",
            code="media_budget_exceeded",
        )


def check_media_budget(parts: list[PlannedPart], limits: LimitsSettings, geometry: VisualTokenGeometry) -> None:
    """Refuse (413) a request whose planned media exceed the per-request budget; the message has the figures."""
    check_part_count(len(parts), limits)
    frames = sum(part.frames for part in parts if part.kind == "video")
    if frames > limits.max_request_frames:
        raise ApiError(
            413,
            f"messages: the request's {sum(p.kind == 'video' for p in parts)} videos would decode {frames} frames; "
            f"the limit is {limits.max_request_frames} frames per request",
            param="messages",
            code="media_budget_exceeded",
        )
    pixels = sum(part.frames * part.pixels_per_frame for part in parts)
    if pixels > limits.max_request_pixels:
        raise ApiError(
            413,
            f"messages: the request's images and frames hold {pixels} pixels after scaling; the limit is "
            f"{limits.max_request_pixels} pixels per request",
            param="messages",
            code="media_budget_exceeded",
        )
    source = sum(part.source_pixels for part in parts if part.kind == "image")
    if source > limits.max_request_source_pixels:
        raise ApiError(
            413,
            f"messages: the request's images hold {source} pixels at their stored size; the limit is "
            f"{limits.max_request_source_pixels} pixels per request (limits.max_request_source_pixels): send smaller images",
            param="messages",
            code="media_budget_exceeded",
        )
    tokens = sum(part.visual_tokens(geometry) for part in parts)
    if tokens > limits.max_prompt_tokens:
        raise ApiError(
            413,
            f"messages: the request's images and videos alone would be {tokens} prompt tokens "
            f"({geometry.pixels_per_token} pixels a token); the limit is {limits.max_prompt_tokens}: send fewer "
            "frames or images",
            param="messages",
            code="prompt_too_long",
        )
