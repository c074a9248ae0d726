"""Sample frames from a video file with PyAV, under limits, at a cost that grows with the frames taken.

Two ways to choose the frames:

- **uniform**: ``num_frames`` spread over the duration, frame ``i`` being the
  first at or after ``(i + 0.5) * duration / num_frames``;
- **fps**: one frame every ``1 / fps`` seconds from the start, capped at
  ``max_frames`` (past the cap the rate is lowered so the whole video is still
  covered, and the answer says which rate was used).

Either way the targets are reached the cheapest way the file allows. With a
keyframe index (MP4, MOV, AVI, and Matroska/WebM cues) the sampler seeks only
when the keyframe before the next target lies further ahead of the decoder than
a seek costs (``_SEEK_COST_FRAMES``); otherwise it decodes on. So a 10-minute
file costs 16 short seeks and a 10-second clip is decoded straight through,
once, up to its last target. Without an index it seeks when the next target is
more than ``_BLIND_SEEK_GAP_S`` ahead.

With a decode budget (:mod:`models.media.decode_budget`: a request's frames and pixels decoded, every frame the
decoder produces counted), each target is reached only when its fair share of what is left affords it;
otherwise the nearest decodable frame is taken (the keyframe before or after it, or the last frame decoded)
and counted in ``substituted``. A file with one keyframe and an hour of 4K costs one decoded frame.

Before any frame is decoded the stored frame size is checked against
``max_source_pixels`` (a 16k x 16k video is refused from its header; the
decoder's own ``max_pixels`` is set to the same limit, so even PyAV's stream
probing never allocates such a frame) and the duration against
``max_duration_s``. A header without a duration gets one from the packet
timestamps, which costs a demux pass and no decoding. Timestamps come from each
frame's own presentation time, so variable frame rate needs nothing special;
rotation metadata (the display matrix) is applied to the pixels.
"""

import dataclasses
import io
import math
import os
import time
from typing import BinaryIO, Iterator

import av
import numpy as np

from models.media.decode_budget import DecodeBudget
from models.media.inputs import (
    AudioOnlyError,
    CorruptVideoError,
    MediaTooLargeError,
    NotAVideoError,
    NoVideoFramesError,
    TruncatedVideoError,
    VideoWindowError,
    scaled_size,
)

# With no keyframe index, seek when the next target is further ahead than this; decode on otherwise.
_BLIND_SEEK_GAP_S = 8.0
# A seek and the keyframe it lands on cost about this many frames of decoding (measured on 720p
# H.264: 5.9 ms against 0.67 ms a frame); seek only when it skips more than that.
_SEEK_COST_FRAMES = 10
_ASSUMED_FPS = 30.0
# A stream that stops this far short of its header's duration (and of a target) is truncated.
_TRUNCATION_SLACK_S = 1.0
# Decoding that fails on more than this share of the stream's packets means a corrupt file.
_CORRUPT_PACKET_SHARE = 0.25

# A path, the bytes, or an open binary file that can seek (a store's object, read in ranges as decoded).
VideoSource = str | os.PathLike | bytes | BinaryIO


@dataclasses.dataclass(frozen=True)
class VideoLimits:
    """What a request's video may cost; ``target_pixels_per_frame`` is the model's pixel budget."""

    max_duration_s: float
    max_source_pixels: int
    max_frames: int
    target_pixels_per_frame: int


@dataclasses.dataclass(frozen=True)
class FrameSelection:
    """Exactly one of ``num_frames`` (uniform) or ``fps`` (a frame every ``1 / fps`` s, capped), over the whole
    video or over the window ``[start_s, end_s)`` of it (a long video's segment: the sampler seeks straight there,
    and the frames' times stay in the whole video's clock)."""

    num_frames: int | None = None
    fps: float | None = None
    start_s: float = 0.0
    end_s: float | None = None  # None: the video's end

    def __post_init__(self) -> None:
        if (self.num_frames is None) == (self.fps is None):
            raise ValueError("Give exactly one of num_frames and fps")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {self.num_frames}")
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"fps must be a positive number, got {self.fps}")
        if not (self.start_s >= 0 and math.isfinite(self.start_s)):
            raise ValueError(f"start_s must be a finite number from 0, got {self.start_s}")
        if self.end_s is not None and not (self.end_s > self.start_s and math.isfinite(self.end_s)):
            raise ValueError(f"end_s must be a finite number after start_s ({self.start_s}), got {self.end_s}")


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    container: str
    codec: str
    width: int
    height: int
    rotation_degrees: int
    duration_s: float
    duration_from: str  # "header" or "packets"
    average_fps: float | None
    has_audio: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SampledVideo:
    """``frames`` is ``T x H x W x 3`` ``uint8``, upright, within the pixel budget."""

    frames: np.ndarray
    timestamps_s: tuple[float, ...]
    info: VideoInfo
    effective_fps: float | None
    seeks: int
    decoded_frames: int
    decode_seconds: float
    decoded_pixels: int = 0
    substituted: int = 0  # targets taken at the nearest decodable frame, to stay within the decode budget


def sample_video(
    source: VideoSource, selection: FrameSelection, limits: VideoLimits, budget: DecodeBudget | None = None
) -> SampledVideo:
    """Open, check the limits, pick the frames; every failure is a :class:`~models.media.inputs.MediaError`.

    ``budget`` is the request's decode budget (frames and pixels, and its stop); every server path passes
    one, and None (no budget) is for benches and tests that measure the sampler itself.
    """
    started = time.perf_counter()
    container = _open(source, limits)
    sampler: _Sampler | None = None
    try:
        stream, info = _inspect(container, limits)
        targets, effective_fps = _targets(info.duration_s, selection, limits.max_frames)
        sampler = _Sampler(container, stream, info, budget)
        arrays, times, rotation = sampler.take(targets, limits.target_pixels_per_frame)
    except av.error.FFmpegError as error:
        raise CorruptVideoError(f"The video does not decode: {_reason(error)}") from error
    finally:
        if sampler is not None:
            sampler.close()
        container.close()
    return SampledVideo(
        frames=np.stack(arrays),
        timestamps_s=tuple(times),
        info=dataclasses.replace(info, rotation_degrees=rotation),
        effective_fps=effective_fps,
        seeks=sampler.seeks,
        decoded_frames=sampler.decoded,
        decode_seconds=time.perf_counter() - started,
        decoded_pixels=sampler.decoded_pixels,
        substituted=sampler.substituted,
    )


# How the container is opened. ``max_pixels`` reaches the decoders too, so stream probing cannot allocate an
# oversized frame. Probing reads little and decodes nothing it can avoid (the demuxers served read sizes and
# rates from their headers): FFmpeg's defaults (5 MB, 5 s) opened an MKV of 100 4K H.264 streams, one
# keyframe each (2.5 MB), at a 2.0 GB peak, by decoding a frame of every stream. ``max_streams`` stops
# the demuxer at 16 streams (a video, its audio tracks and subtitles); only the first video stream is
# ever decoded. Measured: 76 MB peak and 0.05 s for the same file.
_OPEN_OPTIONS = {"probesize": "65536", "analyzeduration": "0", "max_streams": "16"}

# The containers served, by their magic bytes, and FFmpeg's demuxer for each. Only these demuxers ever
# run: without ``format`` FFmpeg probes every demuxer it was built with (image2, concat, hls, ...).
_MP4_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"}
SERVED_CONTAINERS = "MP4/MOV, WebM/Matroska and AVI"


def served_demuxer(head: bytes) -> str:
    """FFmpeg's demuxer for a file starting with ``head`` (12 bytes or more); refuses other containers."""
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[4:8] in _MP4_BOXES:
        return "mov"
    if not head:
        raise NotAVideoError("The file (0 bytes) is empty; it does not open as a video container")
    raise NotAVideoError(
        f"The file does not open as a video container served here ({SERVED_CONTAINERS}): "
        f"its first bytes are {head[:12].hex()}"
    )


def _head(source: VideoSource) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[:12])
    if hasattr(source, "read"):
        source.seek(0)
        head = source.read(12)
        source.seek(0)
        return head
    with open(source, "rb") as file:
        return file.read(12)


def _size(source: VideoSource) -> int:
    if isinstance(source, (bytes, bytearray)):
        return len(source)
    if hasattr(source, "read"):
        return source.seek(0, io.SEEK_END)
    return os.path.getsize(source)


def probe_video(source: VideoSource, limits: VideoLimits) -> VideoInfo:
    """The container's header checked against the limits, without decoding a frame (a request's media budget
    is checked from these before anything is decoded)."""
    container = _open(source, limits)
    try:
        _, info = _inspect(container, limits)
    except av.error.FFmpegError as error:
        raise CorruptVideoError(f"The video's header does not read: {_reason(error)}") from error
    finally:
        container.close()
    return info


def _open(source: VideoSource, limits: VideoLimits) -> av.container.InputContainer:
    demuxer = served_demuxer(_head(source))
    if isinstance(source, (bytes, bytearray)):
        file = io.BytesIO(source)
    else:
        file = source if hasattr(source, "read") else os.fspath(source)
    try:
        return av.open(file, mode="r", format=demuxer, options=_OPEN_OPTIONS | {"max_pixels": str(limits.max_source_pixels)})
    except (av.error.FFmpegError, ValueError) as error:
        size = _size(source)
        raise NotAVideoError(
            f"The file ({size} bytes) does not open as a video container ({_reason(error)}); it is not a video, or it is "
            "truncated before its index (an MP4 cut short loses the index at its end)"
        ) from error


def _reason(error: Exception) -> str:
    """FFmpeg's reason without the file name it names (a path on this server is no business of a client's)."""
    if isinstance(error, av.error.FFmpegError):
        return error.strerror or type(error).__name__
    return str(error)


def _inspect(container: av.container.InputContainer, limits: VideoLimits) -> tuple[av.video.stream.VideoStream, VideoInfo]:
    if not container.streams.video:
        if container.streams.audio:
            raise AudioOnlyError("The file has audio but no video stream; send a video")
        raise NoVideoFramesError("The file has no video stream, or one without a single frame")
    stream = container.streams.video[0]
    # PyAV's default, slice threading: frame threading ("AUTO") was slower here at every access pattern
    # (no faster straight through on 2 cores, and each seek drains its pipeline: 17 frames a seek, not 9).
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > limits.max_source_pixels:
        raise MediaTooLargeError(
            f"Video frames are {width}x{height} = {width * height} pixels; the limit is {limits.max_source_pixels} "
            "pixels per frame (refused before decoding)"
        )
    if width == 0 or height == 0:
        raise CorruptVideoError("The video stream has no frame size in its header; the file is corrupt")
    duration_s, duration_from = _header_duration(container, stream), "header"
    if duration_s is not None and duration_s > limits.max_duration_s:
        raise MediaTooLargeError(f"The video is {duration_s:.1f} s long; the limit is {limits.max_duration_s:g} s")
    if duration_s is None:
        duration_s, duration_from = _duration_from_packets(container, stream), "packets"
        if duration_s > limits.max_duration_s:
            raise MediaTooLargeError(f"The video is {duration_s:.1f} s long; the limit is {limits.max_duration_s:g} s")
    rate = stream.average_rate or stream.guessed_rate
    info = VideoInfo(
        container=container.format.name,
        codec=stream.codec_context.name,
        width=width,
        height=height,
        rotation_degrees=0,  # read from the first decoded frame's display matrix
        duration_s=round(duration_s, 6),
        duration_from=duration_from,
        average_fps=round(float(rate), 3) if rate else None,
        has_audio=bool(container.streams.audio),
    )
    return stream, info


def _header_duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def _duration_from_packets(container, stream) -> float:
    """The span of presentation times, read by demuxing (no decoding); the stream is rewound after."""
    first = last = None
    try:
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            start = float(packet.pts * stream.time_base)
            end = start + float((packet.duration or 0) * stream.time_base)
            first = start if first is None else min(first, start)
            last = end if last is None else max(last, end)
    except av.error.FFmpegError as error:
        raise CorruptVideoError(f"The video's packets do not read: {_reason(error)}") from error
    if first is None:
        raise NoVideoFramesError("The video stream has no frames (no timed packets)")
    container.seek(0)
    return max(0.0, last - first)


def _targets(duration_s: float, selection: FrameSelection, max_frames: int) -> tuple[list[float], float | None]:
    start_s = selection.start_s
    end_s = duration_s if selection.end_s is None else min(selection.end_s, duration_s)
    if start_s >= end_s:
        raise VideoWindowError(f"The window starts at {start_s:g} s; the video ends at {duration_s:g} s")
    span_s = end_s - start_s
    if selection.num_frames is not None:
        if selection.num_frames > max_frames:
            raise MediaTooLargeError(f"{selection.num_frames} frames asked; the limit is {max_frames} frames")
        step = span_s / selection.num_frames
        return [start_s + (index + 0.5) * step for index in range(selection.num_frames)], None
    fps = selection.fps
    count = max(1, math.ceil(span_s * fps - 1e-9))  # every start + i / fps inside the window
    if count > max_frames:
        count, fps = max_frames, max_frames / span_s
    return [start_s + index / fps for index in range(count)], round(fps, 6)


class _Sampler:
    """Walks the stream once, seeking forward only when that skips decoding."""

    def __init__(self, container, stream, info: VideoInfo, budget: DecodeBudget | None) -> None:
        self._container = container
        self._stream = stream
        self._info = info
        self._budget = budget
        self._frame_pixels = info.width * info.height
        self._start_s = float(stream.start_time * stream.time_base) if stream.start_time is not None else None
        self._index = _KeyframeIndex(stream)
        self._fps = info.average_fps or _ASSUMED_FPS
        self._seek_cost_s = _SEEK_COST_FRAMES / self._fps
        self.seeks = 0
        self.decoded = 0
        self.decoded_pixels = 0
        self.substituted = 0
        self.failed_packets = 0
        self.read_packets = 0
        self._frames: Iterator[av.VideoFrame] | None = None
        self._position_s = -math.inf  # time of the last decoded frame
        self._last: tuple[av.VideoFrame, float] | None = None

    def take(self, targets: list[float], target_pixels: int) -> tuple[list[np.ndarray], list[float], int]:
        """The frames at ``targets`` as upright RGB arrays, their times, and the rotation applied.

        Each frame is converted when it is chosen, so only the chosen frames are ever converted and no
        decoded frame is held longer than needed.
        """
        arrays: list[np.ndarray] = []
        times: list[float] = []
        converted: tuple[av.VideoFrame, np.ndarray] | None = None
        rotation = 0
        ended = False
        for number, target_s in enumerate(targets):
            found = None if ended else self._reach(target_s, targets_here=len(targets) - number)
            if found is None:
                ended = True
                if self._last is None and self.failed_packets:
                    raise CorruptVideoError(f"The video is corrupt: {self._damage()}, and none gave a frame")
                if self._last is None:
                    raise NoVideoFramesError("The video stream has no decodable frames")
                self._check_not_truncated(target_s)
                found = self._last
            frame, time_s = found
            if converted is None or converted[0] is not frame:
                converted = (frame, _to_upright_rgb(frame, target_pixels))
                rotation = round(frame.rotation or 0) % 360
            arrays.append(converted[1])
            times.append(time_s)
            if self._budget is not None:
                self._budget.target_taken()
        return arrays, times, rotation

    def _reach(self, target_s: float, targets_here: int) -> tuple[av.VideoFrame, float] | None:
        """The frame for ``target_s``: the first at or after it when the budget's fair share affords reaching it,
        the nearest decodable frame otherwise (counted in ``substituted``); None past the stream's end."""
        if self._budget is None:
            if self._should_seek(target_s):
                self._seek(target_s)
            return self._decode_until(target_s, cap=None)
        share, allowance = self._budget.share(self._frame_pixels, targets_here)
        if self._cost_to_reach(target_s) <= max(share, 1):
            if self._should_seek(target_s):
                self._seek(target_s)
            return self._decode_until(target_s, cap=min(allowance, max(2 * share, 1)))
        return self._nearest_decodable(target_s, cap=allowance)

    def _cost_to_reach(self, target_s: float) -> float:
        """Frames decoded to reach ``target_s`` from where the decoder is, seeking as :meth:`_should_seek` would
        (estimated from the keyframe index and the frame rate; a blind seek's landing is unknown, and the
        decode's cap bounds it)."""
        if self._last is not None and self._last[1] >= target_s and self._position_s >= target_s:
            return 0.0
        start_s = max(self._position_s, 0.0)
        if self._should_seek(target_s):
            start_s = self._index.keyframe_before(target_s) if self._index.covers(target_s) else target_s
        return (target_s - start_s) * self._fps + 1

    def _nearest_decodable(self, target_s: float, cap: int) -> tuple[av.VideoFrame, float] | None:
        """The cheapest frame near ``target_s``: the last frame decoded, or the keyframe before or after the
        target (one seek and about one frame), whichever is nearest in time; without an index, the frame a
        seek to the target lands on. One substitution is counted, whichever frame it comes to."""
        substituted = self.substituted + 1
        found = self._nearest_frame(target_s, cap)
        self.substituted = substituted
        return found

    def _nearest_frame(self, target_s: float, cap: int) -> tuple[av.VideoFrame, float] | None:
        if not self._index.covers(target_s):
            self._seek(target_s)
            return self._decode_until(-math.inf, cap=cap)
        candidates = [
            keyframe_s
            for keyframe_s in (self._index.keyframe_before(target_s), self._index.keyframe_after(target_s))
            if keyframe_s is not None and keyframe_s > self._position_s
        ]
        if self._last is not None:
            candidates.append(self._last[1])
        if not candidates:
            self._seek(target_s)
            return self._decode_until(-math.inf, cap=cap)
        nearest_s = min(candidates, key=lambda time_s: (abs(time_s - target_s), time_s))
        if self._last is not None and nearest_s == self._last[1]:
            return self._last
        self._seek(nearest_s)
        return self._decode_until(nearest_s, cap=cap)

    def _should_seek(self, target_s: float) -> bool:
        """Seek when it skips more decoding than a seek costs (the seek, a decoder flush and the keyframe)."""
        position_s = max(self._position_s, 0.0)
        index = self._index
        if not index.covers(target_s):
            # No index, or one that stops short (Matroska's cues as read so far): seek past long gaps only.
            return target_s - position_s > _BLIND_SEEK_GAP_S
        return index.keyframe_before(target_s) - position_s > self._seek_cost_s

    def _seek(self, target_s: float) -> None:
        start_s = self._start_s or 0.0
        offset = int((start_s + target_s) / self._stream.time_base)
        self._container.seek(offset, stream=self._stream, backward=True, any_frame=False)
        self._frames = None
        self.seeks += 1

    def _decode_until(self, target_s: float, cap: int | None) -> tuple[av.VideoFrame, float] | None:
        """The first frame at or after ``target_s``; after ``cap`` frames decoded short of it, the last one
        (counted in ``substituted``); None when the stream ends first."""
        if self._frames is None:
            self._frames = self._decode()
        if self._last is not None and self._last[1] >= target_s and self._position_s >= target_s:
            return self._last  # two targets on the same frame
        decoded_here = 0
        for frame in self._frames:
            decoded_here += 1
            if frame.time is None:
                continue
            if self._start_s is None:
                self._start_s = frame.time
            relative_s = round(frame.time - self._start_s, 6)
            self._position_s = relative_s
            self._last = (frame, relative_s)
            if relative_s >= target_s - 1e-6:
                return self._last
            if cap is not None and decoded_here >= cap:
                self.substituted += 1
                return self._last
        return None

    def close(self) -> None:
        """Let go of the decoder's frames now. The sampler and its decoding generator refer to each other, so
        without this they (and the FFmpeg buffers they hold, megabytes a 720p frame) wait for Python's cycle
        collector: a process that sampled 60 segments of a 720p video grew from 46 to 212 MB private, and stays
        at 53 MB with this."""
        if self._frames is not None:
            self._frames.close()  # type: ignore[attr-defined] - a generator
            self._frames = None
        self._last = None

    def _decode(self) -> Iterator[av.VideoFrame]:
        for packet in self._container.demux(self._stream):
            self.read_packets += 1
            try:
                frames = packet.decode()
            except av.error.InvalidDataError as error:
                self.failed_packets += 1
                if self.failed_packets > 3 and self.failed_packets > _CORRUPT_PACKET_SHARE * self.read_packets:
                    raise CorruptVideoError(f"The video is corrupt: {self._damage()} ({_reason(error)})") from error
                continue
            for frame in frames:
                pixels = frame.width * frame.height
                if self._budget is not None:
                    self._budget.charge(pixels)
                self.decoded += 1
                self.decoded_pixels += pixels
                yield frame

    def _check_not_truncated(self, target_s: float) -> None:
        last_s = self._last[1] if self._last else 0.0
        frame_s = 1.0 / self._info.average_fps if self._info.average_fps else 0.0
        stops_short = self._info.duration_s - last_s > max(_TRUNCATION_SLACK_S, 2 * frame_s)
        if self._info.duration_from != "header" or not stops_short or target_s - last_s <= frame_s:
            return
        if self.failed_packets:
            raise CorruptVideoError(
                f"The video is corrupt: {self._damage()}; its frames stop at {last_s:.2f} s of the "
                f"{self._info.duration_s:.2f} s its header states"
            )
        raise TruncatedVideoError(
            f"The video stream ends at {last_s:.2f} s but its header says {self._info.duration_s:.2f} s; "
            "the file is truncated or damaged (send the whole, intact file)"
        )

    def _damage(self) -> str:
        return f"{self.failed_packets} of the {self.read_packets} packets read do not decode"


class _KeyframeIndex:
    """The demuxer's index (MP4/MOV/AVI sample tables, Matroska cues), searched by ffmpeg in O(log n).

    The index is live: Matroska's cues are read at the first seek, so its length is read at each use."""

    def __init__(self, stream) -> None:
        self._entries = stream.index_entries
        self._time_base = stream.time_base
        self._start = stream.start_time or 0
        # Matroska's cues point at keyframes without always flagging them.
        self._any_frame = "matroska" in stream.container.format.name

    @property
    def usable(self) -> bool:
        return len(self._entries) > 0

    @property
    def last_s(self) -> float:
        return self._seconds(self._entries[len(self._entries) - 1].timestamp) if self.usable else 0.0

    def covers(self, target_s: float) -> bool:
        """Whether the index reaches ``target_s`` (Matroska's cues may stop short of the end as read so far)."""
        return self.usable and target_s <= self.last_s + _BLIND_SEEK_GAP_S

    def keyframe_before(self, target_s: float) -> float:
        timestamp = self._start + int(target_s / self._time_base)
        index = self._entries.search_timestamp(timestamp, backward=True, any_frame=self._any_frame)
        return self._seconds(self._entries[index].timestamp) if index >= 0 else 0.0

    def keyframe_after(self, target_s: float) -> float | None:
        timestamp = self._start + int(target_s / self._time_base)
        index = self._entries.search_timestamp(timestamp, backward=False, any_frame=self._any_frame)
        return self._seconds(self._entries[index].timestamp) if index >= 0 else None

    def _seconds(self, timestamp: int) -> float:
        return max(0.0, float((timestamp - self._start) * self._time_base))


def _to_upright_rgb(frame: av.VideoFrame, target_pixels: int) -> np.ndarray:
    if frame.width * frame.height > target_pixels:
        width, height = scaled_size(frame.width, frame.height, target_pixels)
        pixels = frame.to_ndarray(format="rgb24", width=width, height=height)
    else:
        pixels = frame.to_ndarray(format="rgb24")
    quarter_turns = round((frame.rotation or 0) / 90) % 4
    # The display matrix's angle is counter-clockwise, as is np.rot90's.
    return np.ascontiguousarray(np.rot90(pixels, k=quarter_turns)) if quarter_turns else pixels
