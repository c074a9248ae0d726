"""Time to take 16 frames from a 10-second and a 10-minute 720p H.264 video, against two baselines.

- ``sampler``: :func:`models.media.video.sample_video` (seeks only where the keyframe index says seeking
  skips decoding);
- ``seek-each``: seek to each target's keyframe and decode up to the target, for every target;
- ``decode-all``: decode every frame of the file once, keeping the targets on the way.

For reference only (its frames differ slightly: it picks frame indices, not times), it also times
``transformers.video_utils.load_video(backend="pyav")``, which decodes up to its last frame.

All three deliver the same thing, the 16 chosen frames as one ``T x H x W x 3`` RGB array at full
size, in the same process, on the same files.
Target: the sampler within 1.1x of the faster baseline at both lengths. The files (30 fps, a
keyframe every 2 s, a noise texture panning over a gradient) are written once with PyAV and cached.

Usage: .venv/bin/python -m bench.sampling [--repeats 8] [--frames 16] [--json]
"""

import argparse
import json
import logging
import pathlib
import statistics
import sys
import time
from typing import Callable

import av
import numpy as np

from bench.plots import DOCS_DIR, sampling_chart
from models.cache_dir import default_cache_dir
from models.media.video import FrameSelection, VideoLimits, sample_video

logger = logging.getLogger("bench.sampling")

WIDTH, HEIGHT, FPS, GOP = 1280, 720, 30, 60
LENGTHS_S = {"10 s": 10, "1 min": 60, "10 min": 600}
TARGET_RATIO = 1.1


def _video(seconds: int) -> pathlib.Path:
    """The test video of this length, written once into the cache."""
    path = default_cache_dir() / "bench" / f"h264-720p-{seconds}s-gop{GOP}-textured.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.mp4")
        logger.info("Writing %s (once)", path)
        if seconds <= CLIP_S:
            _encode_clip(partial, seconds)
        else:
            _repeat_clip(_video(CLIP_S), partial, seconds // CLIP_S)
        partial.rename(path)
    return path


CLIP_S = 10


def _encode_clip(path: pathlib.Path, seconds: int) -> None:
    # A noise texture panning over a gradient: motion the encoder can follow, and detail that makes
    # decoding cost what camera footage costs (about 4 Mbit/s; a flat gradient decodes unrealistically fast).
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, size=(HEIGHT, WIDTH * 2, 3), dtype=np.uint8)
    gradient = np.linspace(0, 96, WIDTH, dtype=np.uint8)[None, :, None]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt, stream.gop_size = WIDTH, HEIGHT, "yuv420p", GOP
        stream.codec_context.options = {"preset": "ultrafast", "crf": "28", "x264-params": "scenecut=0"}
        for index in range(seconds * FPS):
            offset = (index * 4) % WIDTH
            pixels = texture[:, offset : offset + WIDTH] // 2 + gradient
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _repeat_clip(clip: pathlib.Path, path: pathlib.Path, times: int) -> None:
    """The clip's packets ``times`` over, timestamps shifted (no re-encoding: each copy starts on a keyframe)."""
    with av.open(str(clip)) as source, av.open(str(path), mode="w") as container:
        in_stream = source.streams.video[0]
        out_stream = container.add_stream_from_template(in_stream)
        packets = [packet for packet in source.demux(in_stream) if packet.size]
        span = int(CLIP_S / in_stream.time_base)
        for copy in range(times):
            for packet in packets:
                packet.pts += span if copy else 0
                packet.dts += span if copy else 0
                packet.stream = out_stream
                container.mux(packet)
def _targets(duration_s: float, count: int) -> list[float]:
    return [(index + 0.5) * duration_s / count for index in range(count)]


def _open(path: pathlib.Path):
    container = av.open(str(path))
    return container, container.streams.video[0]  # the sampler's decoder settings (PyAV's default threading)


def seek_each(path: pathlib.Path, count: int) -> list[float]:
    container, stream = _open(path)
    with container:
        duration_s = float(stream.duration * stream.time_base)
        times, arrays = [], []
        for target_s in _targets(duration_s, count):
            container.seek(int(target_s / stream.time_base), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.time >= target_s - 1e-6:
                    arrays.append(frame.to_ndarray(format="rgb24"))
                    times.append(frame.time)
                    break
        np.stack(arrays)
        return times


def decode_all(path: pathlib.Path, count: int) -> list[float]:
    container, stream = _open(path)
    with container:
        targets = _targets(float(stream.duration * stream.time_base), count)
        times, arrays = [], []
        for frame in container.decode(stream):
            if targets and frame.time >= targets[0] - 1e-6:
                arrays.append(frame.to_ndarray(format="rgb24"))
                times.append(frame.time)
                targets.pop(0)
        np.stack(arrays)
        return times


def transformers_load_video(path: pathlib.Path, count: int) -> list[float]:
    from transformers.video_utils import load_video

    frames, metadata = load_video(str(path), num_frames=count, backend="pyav")
    return [float(index) / metadata.fps for index in metadata.frames_indices]


def sampler(path: pathlib.Path, count: int) -> list[float]:
    limits = VideoLimits(
        max_duration_s=3600, max_source_pixels=WIDTH * HEIGHT, max_frames=count, target_pixels_per_frame=WIDTH * HEIGHT
    )
    return list(sample_video(path, FrameSelection(num_frames=count), limits).timestamps_s)


def _time_round_robin(
    methods: tuple[tuple[str, Callable[[pathlib.Path, int], list[float]]], ...],
    path: pathlib.Path,
    count: int,
    repeats: dict[str, int],
) -> dict[str, tuple[float, list[float]]]:
    """Median seconds and the frame times of each method: runs interleaved, and the order rotated each
    round, so that no method always runs on a warmer (or busier) machine than another."""
    seconds: dict[str, list[float]] = {name: [] for name, _ in methods}
    times: dict[str, list[float]] = {}
    for round_index in range(max(repeats.values())):
        shift = round_index % len(methods)
        for name, method in methods[shift:] + methods[:shift]:
            if round_index >= repeats[name]:
                continue
            started = time.perf_counter()
            times[name] = method(path, count)
            seconds[name].append(time.perf_counter() - started)
    return {name: (statistics.median(seconds[name]), times[name]) for name, _ in methods}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=8, help="runs of each method per file (median kept)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot-dir", type=pathlib.Path, default=DOCS_DIR, help="where the PNG chart goes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    for label, seconds in LENGTHS_S.items():
        path = _video(seconds)
        methods = (
            ("sampler", sampler),
            ("seek-each", seek_each),
            ("decode-all", decode_all),
            ("transformers", transformers_load_video),
        )
        # Decoding 18,000 720p frames takes a while here: once is enough to see the ratio.
        repeats = {name: 1 if name in {"decode-all", "transformers"} and seconds >= 60 else args.repeats for name, _ in methods}
        results = _time_round_robin(methods, path, args.frames, repeats)
        sampled_times = results["sampler"][1]
        for name in ("seek-each", "decode-all"):
            if not np.allclose(results[name][1], sampled_times, atol=1 / FPS):
                raise RuntimeError(f"{name} took other frames than the sampler: {results[name][1]} vs {sampled_times}")
        fastest_baseline = min(results["seek-each"][0], results["decode-all"][0])
        row = {
            "video": label,
            "frames": args.frames,
            **{f"{name}_s": round(result[0], 4) for name, result in results.items()},
            "sampler_vs_seek_each": round(results["sampler"][0] / results["seek-each"][0], 3),
            "sampler_vs_decode_all": round(results["sampler"][0] / results["decode-all"][0], 3),
            "sampler_vs_faster": round(results["sampler"][0] / fastest_baseline, 3),
            "transformers_vs_sampler": round(results["transformers"][0] / results["sampler"][0], 2),
        }
        rows.append(row)
    logger.info(
        "%-7s %10s %11s %12s %14s %15s %11s %14s",
        "video", "sampler", "seek-each", "decode-all", "vs seek-each", "vs decode-all", "vs faster", "transformers",
    )
    for row in rows:
        logger.info(
            "%-7s %9.3fs %10.3fs %11.3fs %13.2fx %14.3fx %10.2fx %9.3fs (%.1fx)",
            row["video"], row["sampler_s"], row["seek-each_s"], row["decode-all_s"],
            row["sampler_vs_seek_each"], row["sampler_vs_decode_all"], row["sampler_vs_faster"],
            row["transformers_s"], row["transformers_vs_sampler"],
        )
    worst = max(row["sampler_vs_faster"] for row in rows)
    logger.info("worst ratio to the faster baseline: %.2fx (target: at most %.1fx)", worst, TARGET_RATIO)
    sampling_chart(rows, LENGTHS_S, args.plot_dir / "sampling-vs-length.png")
    if args.json:
        sys.stdout.write(json.dumps({"rows": rows, "worst_vs_faster": worst}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
