"""Real media files for tests, made with PIL and PyAV."""

import fractions
import io
import pathlib

import av
import numpy as np
from PIL import Image

# (container format, codec, pixel format) for each video kind the tests write: every format the
# server promises (MP4/H.264, WebM/VP9, MKV, AVI/MPEG-4 Part 2, MOV) and AV1 (the wheel decodes it with dav1d).
VIDEO_KINDS = {
    "mp4": ("mp4", "libx264", "yuv420p"),
    "webm": ("webm", "libvpx-vp9", "yuv420p"),
    "mkv": ("matroska", "libx264", "yuv420p"),
    "avi": ("avi", "mpeg4", "yuv420p"),
    "mov": ("mov", "libx264", "yuv420p"),
    "av1": ("mp4", "libsvtav1", "yuv420p"),
}


class _WriteOnly(io.RawIOBase):
    """A sink that cannot seek, so muxers cannot go back to write the duration into the header."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.buffer += data
        return len(data)


def image_bytes(image_format: str, *, width: int = 64, height: int = 48, seed: int = 0, noise: bool = True) -> bytes:
    """A random (or, with ``noise=False``, flat grey and tiny once compressed) RGB image as PNG, JPEG or WEBP."""
    if noise:
        pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    else:
        pixels = np.full((height, width, 3), 128, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


def frame_index_color(index: int) -> tuple[int, int, int]:
    """A colour that encodes a frame's index, readable back after lossy coding."""
    return ((index * 37) % 256, (index * 91) % 256, (255 - index * 13) % 256)


def frame_index_of(pixels: np.ndarray, num_frames: int) -> int:
    """Which frame of a ``video_bytes`` video this is, from the colour at its centre."""
    center = pixels[pixels.shape[0] // 2, pixels.shape[1] // 2].astype(int)
    distances = [np.abs(center - np.array(frame_index_color(i))).sum() for i in range(num_frames)]
    return int(np.argmin(distances))


def video_bytes(
    kind: str = "mp4",
    *,
    num_frames: int = 24,
    fps: int = 12,
    width: int = 64,
    height: int = 48,
    gop: int = 12,
    timestamps_s: list[float] | None = None,
    rotation_degrees: int | None = None,
    with_duration: bool = True,
    pattern: str = "flat",
) -> bytes:
    """A video whose frame ``i`` is a flat colour ``frame_index_color(i)``.

    ``timestamps_s`` gives each frame's time (variable frame rate); ``rotation_degrees`` writes a
    display matrix; ``with_duration=False`` writes to a sink that cannot seek, so the header has no
    duration; ``pattern="top"`` also paints the top quarter white, to check orientation.
    """
    container_format, codec, pixel_format = VIDEO_KINDS[kind]
    sink = io.BytesIO() if with_duration else _WriteOnly()
    times = timestamps_s if timestamps_s is not None else [index / fps for index in range(num_frames)]
    with av.open(sink, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pixel_format
        stream.gop_size = gop
        if codec == "libx264":
            # Every frame is a new flat colour: without this x264 makes each one a scene-cut keyframe.
            stream.codec_context.options = {"x264-params": "scenecut=0"}
        if timestamps_s is not None:
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        if rotation_degrees is not None:
            stream.set_display_rotation(rotation_degrees)
        for index, time_s in enumerate(times):
            pixels = np.empty((height, width, 3), dtype=np.uint8)
            pixels[:] = frame_index_color(index)
            if pattern == "top":
                pixels[: height // 4] = 255
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            if timestamps_s is not None:
                frame.pts, frame.time_base = round(time_s * 1000), fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return sink.getvalue() if with_duration else bytes(sink.buffer)


def audio_only_bytes(*, seconds: float = 0.5, rate: int = 16000) -> bytes:
    """An MP4 with one AAC audio stream and no video."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        samples = int(seconds * rate)
        tone = (np.sin(np.arange(samples) / 10.0) * 0.2).astype(np.float32).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def write(path: pathlib.Path, data: bytes) -> pathlib.Path:
    path.write_bytes(data)
    return path


def empty_video_bytes(kind: str = "mp4") -> bytes:
    """A container with a video stream and not one frame in it."""
    container_format, codec, pixel_format = VIDEO_KINDS[kind]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 48, pixel_format
        container.start_encoding()  # writes the header, which PyAV otherwise leaves for the first packet
    return buffer.getvalue()
