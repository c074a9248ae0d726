"""Real media files for tests, made with PIL and PyAV."""

import io
import pathlib

import av
import numpy as np
from PIL import Image

# (container format, codec, pixel format) for each video kind the tests write.
VIDEO_KINDS = {
    "mp4": ("mp4", "libx264", "yuv420p"),
    "webm": ("webm", "libvpx-vp9", "yuv420p"),
}


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


def video_bytes(
    kind: str = "mp4",
    *,
    num_frames: int = 24,
    fps: int = 12,
    width: int = 64,
    height: int = 48,
    gop: int = 12,
) -> bytes:
    """A video whose frame ``i`` is a flat colour ``frame_index_color(i)``."""
    container_format, codec, pixel_format = VIDEO_KINDS[kind]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pixel_format
        stream.gop_size = gop
        for index in range(num_frames):
            pixels = np.empty((height, width, 3), dtype=np.uint8)
            pixels[:] = frame_index_color(index)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


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
