"""Make a request cheaper after it ran out of memory: half the frames, half the pixels, down to a minimum (``request_oom``'s).

Each step halves the frames of every video (keeping every other one, so they still span the
video) and halves the pixel budget of every image and frame (scaling by 1/sqrt(2) a side). A
dimension already at its minimum stays there; when nothing can shrink any more there is no next step.
"""

import dataclasses
import math

import numpy as np
from PIL import Image

from models.media.inputs import scaled_size
from models.requests import ChatMessage, ContentPart, GenerationRequest, ImagePart, VideoPart


@dataclasses.dataclass(frozen=True)
class ShrinkMinimum:
    """The least a shrunk request keeps (``request_oom.min_frames``, ``request_oom.min_pixels_per_frame``)."""

    min_frames: int
    min_pixels_per_frame: int


@dataclasses.dataclass(frozen=True)
class RequestSize:
    """What a request's media costs: the numbers an out-of-memory log line and the answer carry."""

    video_frames: int
    images: int
    max_pixels_per_frame: int

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class OomRetry:
    """One out-of-memory on a request and the smaller request that followed."""

    before: RequestSize
    after: RequestSize
    freed_bytes: int

    def to_dict(self) -> dict:
        return {"before": self.before.to_dict(), "after": self.after.to_dict(), "freed_bytes": self.freed_bytes}


def request_size(request: GenerationRequest) -> RequestSize:
    pixels = [_pixels(part) for message in request.messages for part in message.content]
    return RequestSize(
        video_frames=request.num_video_frames, images=request.num_images, max_pixels_per_frame=max(pixels, default=0)
    )


def media_pixels(request: GenerationRequest) -> int:
    """All the pixels a request's images and video frames hold together."""
    return sum(
        _pixels(part) * (len(part.frames) if isinstance(part, VideoPart) else 1)
        for message in request.messages
        for part in message.content
    )


def shrink_request(request: GenerationRequest, minimum: ShrinkMinimum) -> GenerationRequest | None:
    """The next smaller request, or ``None`` when every video and image is at the minimum already."""
    changed = False
    messages = []
    for message in request.messages:
        parts: list[ContentPart] = []
        for part in message.content:
            smaller = _shrink_part(part, minimum)
            changed |= smaller is not part
            parts.append(smaller)
        messages.append(ChatMessage(role=message.role, content=tuple(parts)))
    return dataclasses.replace(request, messages=tuple(messages)) if changed else None


def _pixels(part: ContentPart) -> int:
    if isinstance(part, ImagePart):
        return part.pixels.shape[0] * part.pixels.shape[1]
    if isinstance(part, VideoPart):
        return part.frames.shape[1] * part.frames.shape[2]
    return 0


def _shrink_part(part: ContentPart, minimum: ShrinkMinimum) -> ContentPart:
    if isinstance(part, ImagePart):
        pixels = _halve_pixels(part.pixels[np.newaxis], minimum.min_pixels_per_frame)
        return part if pixels is None else ImagePart(pixels=pixels[0], source=part.source)
    if isinstance(part, VideoPart):
        frames, timestamps = part.frames, part.timestamps_s
        if len(frames) > minimum.min_frames:
            keep = _every_other(len(frames), max(minimum.min_frames, math.ceil(len(frames) / 2)))
            frames = frames[keep]
            timestamps = tuple(timestamps[index] for index in keep) if timestamps else ()
        smaller = _halve_pixels(frames, minimum.min_pixels_per_frame)
        if smaller is not None:
            frames = smaller
        if frames is part.frames:
            return part
        return VideoPart(frames=frames, timestamps_s=timestamps, source=part.source)  # identified by what it holds now
    return part


def _every_other(count: int, keep: int) -> list[int]:
    """``keep`` indices spread over ``range(count)``, the first and the last among them."""
    return sorted({round(index * (count - 1) / max(1, keep - 1)) for index in range(keep)})


def _halve_pixels(frames: np.ndarray, min_pixels: int) -> np.ndarray | None:
    """``N x H x W x 3`` frames at half the pixels (not under ``min_pixels``); ``None`` if already there."""
    _, height, width, _ = frames.shape
    if height * width // 2 > min_pixels:
        new_width, new_height = scaled_size(width, height, height * width // 2)
    else:  # the last step lands on the minimum: round up, never under it
        scale = math.sqrt(min_pixels / (height * width))
        new_width, new_height = math.ceil(width * scale / 2) * 2, math.ceil(height * scale / 2) * 2
    if new_width * new_height >= height * width:
        return None
    resized = [
        np.asarray(Image.fromarray(frame).resize((new_width, new_height), Image.Resampling.BILINEAR)) for frame in frames
    ]
    return np.stack(resized)
