"""Media files an attacker (or an unusual recorder) makes, written fast by repeating encoded packets.

- :func:`sparse_keyframe_video`: one keyframe every ``keyframe_interval_s`` (or only the first) and skip
  frames between them: an hour of 4K at 30 fps is about 3.4 MB, and reaching a target 50 s behind its
  keyframe costs 1,500 decoded frames. A long-GOP screen recording has the same shape.
- :func:`many_stream_video`: a Matroska file of ``streams`` 4K H.264 streams of one keyframe each, which
  FFmpeg's default probing decodes all of at open (100 streams, 2.5 MB: a 2.0 GB peak).

Both encode two frames with x264 and mux copies of their packets, so a file of any length takes about a
second to write. Used by ``bench/hostile_request.py`` and the tests.
"""

import fractions
import pathlib

import av
import numpy as np


def _encoded_pair(width: int, height: int, fps: int) -> tuple[bytes, bytes, bytes | None]:
    """(keyframe, skip frame, extradata): a flat grey keyframe (its parameter sets in band) and a P frame that repeats it."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base, encoder.framerate = fractions.Fraction(1, fps), fps
    encoder.options = {"x264-params": "keyint=infinite:scenecut=0:bframes=0", "preset": "ultrafast"}
    packets = []
    for index in range(2):
        frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 90, dtype=np.uint8), format="rgb24")
        frame.pts = index
        packets += encoder.encode(frame)
    packets += encoder.encode()
    return bytes(packets[0]), bytes(packets[1]), encoder.extradata


def sparse_keyframe_video(
    path: pathlib.Path,
    *,
    width: int = 3840,
    height: int = 2160,
    fps: int = 30,
    seconds: float = 3600.0,
    keyframe_interval_s: float | None = None,
    container_format: str = "mp4",
) -> pathlib.Path:
    """H.264 at ``fps`` with a keyframe every ``keyframe_interval_s`` (None: the first frame only)."""
    keyframe, skip, extradata = _encoded_pair(width, height, fps)
    interval = round(keyframe_interval_s * fps) if keyframe_interval_s else None
    time_base = fractions.Fraction(1, fps)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.extradata = extradata
        stream.time_base = time_base
        for index in range(round(seconds * fps)):
            is_key = index == 0 or (interval is not None and index % interval == 0)
            packet = av.Packet(keyframe if is_key else skip)
            packet.pts = packet.dts = index
            packet.time_base, packet.stream, packet.is_keyframe = time_base, stream, is_key
            container.mux(packet)
    return path


def many_stream_video(path: pathlib.Path, *, streams: int = 100, width: int = 3840, height: int = 2160) -> pathlib.Path:
    """Matroska with ``streams`` H.264 video streams of one keyframe each."""
    keyframe, _, extradata = _encoded_pair(width, height, 30)
    with av.open(str(path), "w", format="matroska") as container:
        added = []
        for _ in range(streams):
            stream = container.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.extradata = extradata
            added.append(stream)
        for stream in added:
            packet = av.Packet(keyframe)
            packet.pts = packet.dts = 0
            packet.time_base, packet.stream, packet.is_keyframe = fractions.Fraction(1, 30), stream, True
            container.mux(packet)
    return path
