"""Turn a request's media into model inputs: data URLs, images, video frames.

Everything here runs at the edge (the ingress), so a bad file fails before it
reaches a model replica. Every failure is a :class:`MediaError` whose message
says what was wrong; its subclasses tell the HTTP layer which status fits.
"""

import base64
import binascii
import dataclasses
import io
import logging
import math
import warnings

import av
import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_MIME_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
VIDEO_MIME_TYPES = frozenset({"video/mp4", "video/webm"})


class MediaError(ValueError):
    """A media input that cannot be used; the message says why."""


class UnsupportedMediaTypeError(MediaError):
    """The declared media type is not one this server decodes."""


class InvalidDataUrlError(MediaError):
    """Not a data URL, or its base64 payload does not decode."""


class MediaDecodeError(MediaError):
    """The bytes do not decode as the media they claim to be."""


class MediaTooLargeError(MediaError):
    """The media exceeds a configured limit."""


@dataclasses.dataclass(frozen=True)
class DataUrl:
    mime_type: str
    payload: bytes


@dataclasses.dataclass(frozen=True)
class SampledFrames:
    """``frames`` is ``T x H x W x 3`` ``uint8``; ``timestamps_s`` has one entry per frame."""

    frames: np.ndarray
    timestamps_s: tuple[float, ...]


def parse_data_url(url: str, *, allowed_mime_types: frozenset[str]) -> DataUrl:
    """Split ``data:<mime>;base64,<payload>`` into its type and decoded bytes.

    Only data URLs are accepted: the server never fetches a remote URL or reads
    a server-side path named by a request.
    """
    if not url.startswith("data:"):
        scheme = url.split(":", 1)[0] if ":" in url else url[:16]
        raise InvalidDataUrlError(
            f"Only data URLs are accepted (data:<type>;base64,<payload>); got a URL starting with {scheme!r}. "
            "This server does not fetch remote URLs or read server-side files: embed the file as a data URL."
        )
    header, separator, encoded = url[len("data:") :].partition(",")
    if not separator:
        raise InvalidDataUrlError("Malformed data URL: no ',' between the media type and the payload")
    mime_type, *parameters = header.split(";")
    mime_type = mime_type.strip().lower()
    if "base64" not in (parameter.strip().lower() for parameter in parameters):
        raise InvalidDataUrlError(f"Data URL for {mime_type or 'unknown type'} must be base64-encoded (';base64,')")
    if mime_type not in allowed_mime_types:
        raise UnsupportedMediaTypeError(
            f"Media type {mime_type or '(none)'!r} is not supported here; use one of {sorted(allowed_mime_types)}"
        )
    try:
        payload = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidDataUrlError(f"The base64 payload of the {mime_type} data URL does not decode: {error}") from error
    if not payload:
        raise MediaDecodeError(f"The {mime_type} data URL is empty")
    return DataUrl(mime_type=mime_type, payload=payload)


def decode_image(data: bytes, *, max_pixels: int, target_pixels: int) -> np.ndarray:
    """Decode PNG / JPEG / WebP bytes to an ``H x W x 3`` ``uint8`` array.

    The pixel count is checked against ``max_pixels`` from the header, before
    any pixel is decoded; an image above ``target_pixels`` is scaled down to it,
    keeping its aspect ratio.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise MediaTooLargeError(
                    f"Image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
                )
            image.load()
    except MediaTooLargeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise MediaDecodeError(f"Image does not decode ({len(data)} bytes): {error}") from error
    image = image.convert("RGB")
    if width * height > target_pixels:
        image = image.resize(_scaled_size(width, height, target_pixels), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def sample_video_frames(data: bytes, *, num_frames: int, max_pixels_per_frame: int) -> SampledFrames:
    """Take ``num_frames`` frames spread uniformly over a video's duration.

    Frame ``i`` is the first frame at or after ``(i + 0.5) * duration / num_frames``.
    Long videos are sampled by seeking to each target (cost grows with the
    frames taken, not the video's length); short ones, and files without a
    known duration, are decoded straight through, stopping after the last target.
    Frames larger than ``max_pixels_per_frame`` are scaled down, keeping aspect.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError) as error:
        raise MediaDecodeError(f"Video does not open as a media container ({len(data)} bytes): {error}") from error
    try:
        if not container.streams.video:
            raise MediaDecodeError("The file has no video stream (audio only or empty)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        duration_s = _duration_seconds(container, stream)
        if duration_s is not None and duration_s >= _SEEK_FROM_DURATION_S:
            frames, timestamps = _sample_by_seeking(container, stream, duration_s, num_frames)
        else:
            frames, timestamps = _sample_sequentially(container, stream, duration_s, num_frames)
    except av.error.FFmpegError as error:
        raise MediaDecodeError(f"Video does not decode: {error}") from error
    finally:
        container.close()
    if not frames:
        raise MediaDecodeError("The video stream has no decodable frames")
    arrays = [_frame_to_rgb(frame, max_pixels_per_frame) for frame in frames]
    return SampledFrames(frames=np.stack(arrays), timestamps_s=tuple(timestamps))


# Below this duration decoding straight through beats seeking (each seek decodes
# from the previous keyframe); DESIGN.md has the measurement.
_SEEK_FROM_DURATION_S = 30.0


def _duration_seconds(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _target_times(duration_s: float, num_frames: int) -> list[float]:
    step = duration_s / num_frames
    return [(index + 0.5) * step for index in range(num_frames)]


def _frame_time(frame: av.VideoFrame) -> float | None:
    return float(frame.time) if frame.time is not None else None


def _sample_by_seeking(container, stream, duration_s: float, num_frames: int):
    frames: list[av.VideoFrame] = []
    timestamps: list[float] = []
    start_s = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    for target_s in _target_times(duration_s, num_frames):
        container.seek(int((start_s + target_s) / stream.time_base), stream=stream, backward=True, any_frame=False)
        chosen = None
        for frame in container.decode(stream):
            chosen = frame
            frame_s = _frame_time(frame)
            if frame_s is None or frame_s - start_s >= target_s:
                break
        if chosen is not None:
            frames.append(chosen)
            timestamps.append(round((_frame_time(chosen) or start_s + target_s) - start_s, 6))
    return frames, timestamps


def _sample_sequentially(container, stream, duration_s: float | None, num_frames: int):
    if duration_s is None:
        # No duration in the header: decode everything, then pick uniformly.
        decoded = list(container.decode(stream))
        if not decoded:
            return [], []
        picks = np.linspace(0, len(decoded) - 1, num=min(num_frames, len(decoded))).round().astype(int)
        start_s = _frame_time(decoded[0]) or 0.0
        chosen = [decoded[i] for i in picks]
        return chosen, [round((_frame_time(frame) or 0.0) - start_s, 6) for frame in chosen]
    targets = _target_times(duration_s, num_frames)
    frames: list[av.VideoFrame] = []
    timestamps: list[float] = []
    start_s: float | None = None
    previous = None
    for frame in container.decode(stream):
        frame_s = _frame_time(frame)
        if start_s is None:
            start_s = frame_s or 0.0
        relative_s = (frame_s - start_s) if frame_s is not None else 0.0
        while targets and relative_s >= targets[0]:
            frames.append(frame)
            timestamps.append(round(relative_s, 6))
            targets.pop(0)
        previous = frame
        if not targets:
            break
    # Targets past the last frame (header duration longer than the stream) get the last frame.
    if targets and previous is not None:
        relative_s = ((_frame_time(previous) or 0.0) - (start_s or 0.0))
        for _ in targets:
            frames.append(previous)
            timestamps.append(round(relative_s, 6))
    return frames, timestamps


def _frame_to_rgb(frame: av.VideoFrame, max_pixels: int) -> np.ndarray:
    if frame.width * frame.height > max_pixels:
        width, height = _scaled_size(frame.width, frame.height, max_pixels)
        return frame.to_ndarray(format="rgb24", width=width, height=height)
    return frame.to_ndarray(format="rgb24")


def _scaled_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest even size with the same aspect ratio and at most ``max_pixels`` pixels."""
    scale = math.sqrt(max_pixels / (width * height))
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)
