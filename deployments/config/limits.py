"""What one request may ask for and cost (``limits``), how one that runs out of memory is retried
(``request_oom``), and where its media may come from (``media``)."""

import threading
import urllib.parse

from pydantic import Field, field_validator, model_validator

from deployments.config.strict import MIB, StrictSettings
from models.media.decode_budget import DecodeBudget
from models.media.video import VideoLimits


class LimitsSettings(StrictSettings):
    max_request_bytes: int = Field(default=32 * MIB, gt=0, description="Largest request body accepted (413 above).")
    max_content_parts: int = Field(default=16, gt=0, description="Most content parts in one message.")
    max_messages: int = Field(default=64, gt=0, description="Most messages in one request.")
    max_image_pixels: int = Field(
        default=40_000_000, gt=0, description="Largest image (width x height) decoded; checked before decoding."
    )
    max_image_bytes: int = Field(
        default=16 * MIB, gt=0, description="Largest image, inline or an uploaded file, in bytes (413 above; a file is refused unread)."
    )
    max_pixels_per_frame: int = Field(
        default=448 * 448, gt=0, description="Images and video frames are scaled down to at most this many pixels."
    )
    video_frames: int = Field(default=8, gt=0, description="Frames sampled uniformly from a video when a request sets none.")
    max_video_frames: int = Field(default=32, gt=0, description="Most frames one request may ask for (frames or fps).")
    max_video_fps: float = Field(default=30.0, gt=0, description="Highest sampling rate /v1/analyze accepts.")
    max_video_duration_s: float = Field(default=3600.0, gt=0, description="Longest video accepted (413 above).")
    max_video_source_pixels: int = Field(
        default=8192 * 4320,
        gt=0,
        description="Largest stored frame (width x height) of a video, checked from its header before decoding (413).",
    )
    max_decoded_frames: int = Field(
        default=4096,
        gt=0,
        description="Most frames the decoder may produce for one request, across its videos, counting every frame "
        "decoded to reach a sampled one (the frames behind a far keyframe). A target the request's share cannot "
        "reach is taken at the nearest decodable frame (the answer's frames.substituted says how many); a request "
        "that cannot afford one frame a target is refused (413).",
    )
    max_decoded_pixels: int = Field(
        default=1_000_000_000,
        gt=0,
        description="Most pixels (at stored size) the decoder may produce for one request, counted as "
        "max_decoded_frames is: what decoding costs in CPU (about 1.6 ns a pixel here: 1.6 s for the default).",
    )
    max_upload_bytes: int = Field(
        default=256 * MIB, gt=0, description="Largest /v1/analyze upload, counted while it arrives (413 above)."
    )
    max_question_bytes: int = Field(default=16 * 1024, gt=0, description="Largest /v1/analyze question (413 above).")
    max_prompt_tokens: int = Field(
        default=8192,
        gt=0,
        description="Most prompt tokens (text plus image and video tokens) one request may use (413). Every replica "
        "keeps memory free for the largest request the limits allow, this long prompt included, as admission prices "
        "it (on the CPU, attention over the prompt grows with its square).",
    )
    max_media_parts: int = Field(
        default=32, gt=0, description="Most images and videos in one request, across all its messages (413 above)."
    )
    max_request_frames: int = Field(
        default=64, gt=0, description="Most video frames one request may decode, across all its videos (413 above)."
    )
    max_request_pixels: int = Field(
        default=64 * 448 * 448,
        gt=0,
        description="Most pixels of all a request's images and frames together, after scaling each to "
        "max_pixels_per_frame (413 above; checked from headers before decoding).",
    )
    max_schema_bytes: int = Field(
        default=16 * 1024, gt=0, description="Largest response_format json_schema, as compact JSON (400 above)."
    )
    max_schema_depth: int = Field(
        default=24, gt=0, description="Most JSON levels a response_format json_schema nests (400 above; a schema level is about two)."
    )
    max_schema_enum_values: int = Field(
        default=512, gt=0, description="Most enum and const values in one response_format json_schema, all enums together (400 above)."
    )
    max_schema_compile_s: float = Field(
        default=1.5,
        gt=0,
        description="Longest a response_format's grammar may compile, in the replica's compile server; past it the "
        "compile is killed and the request refused (400). Schemas within the other caps compile in milliseconds; a "
        "66-byte pattern of 400 repeated groups took 2.5 s.",
    )
    max_schema_compiles: int = Field(
        default=4,
        gt=0,
        description="Schema compiles one replica runs at once (each in a process of its own); past it a request with a "
        "schema not compiled yet is turned away as busy at once (503 when no replica can take it), never queued.",
    )
    max_schema_compile_bytes: int = Field(
        default=2 * 2**30,
        gt=0,
        description="Memory one schema compile may take beyond the compile server's own (its process's address space); "
        "past it the compile fails and the request is refused (400).",
    )
    max_request_source_pixels: int = Field(
        default=100_000_000,
        gt=0,
        description="Most pixels a request's images hold at their stored size, all together: what decoding them costs "
        "before any scaling (413 above; read from their headers before decoding). Without it, 32 images of 40 "
        "megapixels held the ingress for 25.3 s (docs/benchmarks.md).",
    )
    default_max_tokens: int = Field(default=64, gt=0, description="New tokens when a request sets none.")
    max_tokens: int = Field(default=512, gt=0, description="Most new tokens a request may ask for.")
    max_choices: int = Field(
        default=8, gt=0, description="Most choices (n) in one chat request; each is a row in the replica's batch."
    )

    @model_validator(mode="after")
    def _default_within_max(self) -> "LimitsSettings":
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(
                f"limits.default_max_tokens ({self.default_max_tokens}) must be less than or equal to "
                f"limits.max_tokens ({self.max_tokens})"
            )
        if self.video_frames > self.max_request_frames:
            raise ValueError(
                f"limits.video_frames ({self.video_frames}) must be less than or equal to "
                f"limits.max_request_frames ({self.max_request_frames}): one video must fit a request"
            )
        if self.video_frames > self.max_video_frames:
            raise ValueError(
                f"limits.video_frames ({self.video_frames}) must be less than or equal to "
                f"limits.max_video_frames ({self.max_video_frames})"
            )
        return self

    def decode_budget(self, targets: int, stop: threading.Event | None = None) -> DecodeBudget:
        """A fresh decode budget for one request that samples ``targets`` frames in all; ``stop``, the request's
        own when it has one, ends its decode."""
        budget = DecodeBudget(max_frames=self.max_decoded_frames, max_pixels=self.max_decoded_pixels, targets_left=targets)
        if stop is not None:
            budget.stop = stop
        return budget

    def video_limits(self) -> VideoLimits:
        return VideoLimits(
            max_duration_s=self.max_video_duration_s,
            max_source_pixels=self.max_video_source_pixels,
            max_frames=self.max_video_frames,
            target_pixels_per_frame=self.max_pixels_per_frame,
        )


class RequestOomSettings(StrictSettings):
    """How a request that runs out of memory is retried on the same replica before it goes to the other group."""

    min_frames: int = Field(default=2, ge=1, description="Frames are halved on each retry, down to this many.")
    min_pixels_per_frame: int = Field(
        default=224 * 224, gt=0, description="The pixel budget per image or frame is halved on each retry, down to this."
    )


class MediaSettings(StrictSettings):
    remote_url_allow_list: tuple[str, ...] = Field(
        default=(),
        description="URL prefixes (scheme://host[:port]/path) that image_url/video_url may fetch; empty means data URLs only.",
    )
    remote_fetch_timeout_s: float = Field(default=10.0, gt=0, description="Timeout of one allowed remote fetch.")

    @field_validator("remote_url_allow_list")
    @classmethod
    def _absolute_http_prefixes(cls, prefixes: tuple[str, ...]) -> tuple[str, ...]:
        for prefix in prefixes:
            parsed = urllib.parse.urlsplit(prefix)
            if parsed.scheme not in {"http", "https"} or not parsed.hostname or parsed.username or parsed.password:
                raise ValueError(
                    f"media.remote_url_allow_list entry {prefix!r} must be an http(s) URL prefix with a host and no "
                    "user info, such as 'https://media.example.com/videos/'"
                )
        return prefixes
