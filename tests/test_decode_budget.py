"""The decode budget on real files (bench/hostile_media.py writes them): what a request's videos may cost the
decoder, whatever the file's structure, and the stop that ends a decode when its request ends."""

import subprocess
import sys
import threading

import media_factory
import pytest
from polling import wait_for_condition

from bench.hostile_media import many_stream_video, sparse_keyframe_video
from models.media import inputs as media
from models.media.decode_budget import DecodeBudget
from models.media.video import FrameSelection, VideoLimits, sample_video

pytestmark = pytest.mark.unit

LIMITS = VideoLimits(max_duration_s=3600, max_source_pixels=8192 * 4320, max_frames=32, target_pixels_per_frame=448 * 448)
DEFAULT_PIXELS = 1_000_000_000  # limits.max_decoded_pixels's default


def _budget(targets: int, max_frames: int = 4096, max_pixels: int = DEFAULT_PIXELS) -> DecodeBudget:
    return DecodeBudget(max_frames=max_frames, max_pixels=max_pixels, targets_left=targets)


def test_an_hour_of_4k_behind_one_keyframe_costs_one_decoded_frame(tmp_path):
    # The audit's file: 3.4 MB, one keyframe, an hour of skip frames. Unbudgeted, target 32 (at 3544 s) was
    # reached by decoding 106,000 4K frames.
    path = sparse_keyframe_video(tmp_path / "hour.mp4", seconds=3600)
    budget = _budget(32)

    sampled = sample_video(path, FrameSelection(num_frames=32), LIMITS, budget)

    assert sampled.decoded_frames == budget.frames == 1
    assert sampled.decoded_pixels == budget.pixels == 3840 * 2160
    assert sampled.substituted == 32 and sampled.timestamps_s == (0.0,) * 32  # the only decodable frame, reported


@pytest.mark.parametrize("container_format", ["mp4", "matroska"])
def test_a_long_gop_recording_is_sampled_at_the_nearest_keyframes_within_the_budget(tmp_path, container_format):
    # A 10-minute 1080p screen recording, a keyframe every 10 s: 8 exact targets cost 1,208 decoded frames
    # (2.5 gigapixels); the default budget holds 482 frames of 1080p.
    path = sparse_keyframe_video(tmp_path / "screen", width=1920, height=1080, seconds=600, keyframe_interval_s=10,
                                 container_format=container_format)
    exact = sample_video(path, FrameSelection(num_frames=8), LIMITS)
    budget = _budget(8)

    sampled = sample_video(path, FrameSelection(num_frames=8), LIMITS, budget)

    assert exact.decoded_frames > 1200 and exact.substituted == 0
    assert budget.pixels == sampled.decoded_pixels <= DEFAULT_PIXELS
    assert sampled.decoded_frames < exact.decoded_frames / 2
    assert 0 < sampled.substituted < 8  # the targets near a keyframe are still exact
    targets = [(index + 0.5) * 75.0 for index in range(8)]
    assert all(abs(taken - target) <= 5.0 for taken, target in zip(sampled.timestamps_s, targets)), sampled.timestamps_s
    assert list(sampled.timestamps_s) == sorted(sampled.timestamps_s)


def test_one_budget_is_shared_by_a_requests_videos(tmp_path):
    path = sparse_keyframe_video(tmp_path / "gop.mp4", width=640, height=360, seconds=120, keyframe_interval_s=10)
    budget = _budget(16, max_frames=300)

    first = sample_video(path, FrameSelection(num_frames=8), LIMITS, budget)
    second = sample_video(path, FrameSelection(num_frames=8), LIMITS, budget)

    assert budget.frames == first.decoded_frames + second.decoded_frames <= 300
    assert budget.targets_left == 0


def test_a_request_that_cannot_afford_one_frame_a_target_is_refused_with_the_figures(tmp_path):
    path = sparse_keyframe_video(tmp_path / "4k.mp4", seconds=20, keyframe_interval_s=1)
    budget = _budget(8, max_pixels=3 * 3840 * 2160)

    with pytest.raises(media.DecodeBudgetExceededError) as refused:
        sample_video(path, FrameSelection(num_frames=8), LIMITS, budget)

    assert budget.frames == 3
    assert "limits.max_decoded_pixels (24883200)" in str(refused.value)
    assert "8294400 pixels each" in str(refused.value)


def test_frames_of_a_short_clip_are_all_exact_within_the_budget():
    data = media_factory.video_bytes("mp4", num_frames=120, fps=12, gop=240)
    budget = _budget(8)

    sampled = sample_video(data, FrameSelection(num_frames=8), LIMITS, budget)

    assert sampled.substituted == 0 and sampled.seeks == 0
    assert [media_factory.frame_index_of(frame, 120) for frame in sampled.frames] == [8, 23, 38, 53, 68, 83, 98, 113]


def test_the_decode_stops_at_the_next_frame_when_its_request_ends(tmp_path):
    # 60 s of 720p behind one keyframe, budget large enough to decode it all: only the stop ends it early.
    path = sparse_keyframe_video(tmp_path / "long.mp4", width=1280, height=720, seconds=60)
    budget = _budget(1, max_frames=10**6, max_pixels=10**15)
    outcome: list[BaseException] = []

    def decode() -> None:
        try:
            sample_video(path, FrameSelection(num_frames=1), LIMITS, budget)  # target 30 s: 900 frames
        except media.MediaError as error:
            outcome.append(error)

    worker = threading.Thread(target=decode)
    worker.start()
    wait_for_condition(lambda: budget.frames >= 20, timeout_s=30, interval_s=0.005)
    budget.stop.set()
    stopped_at = budget.frames
    worker.join(timeout=10)

    assert not worker.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], media.DecodeStoppedError)
    assert "its request ended" in str(outcome[0])
    assert budget.frames <= stopped_at + 1 < 900


def test_a_file_of_100_4k_streams_opens_without_decoding_them(tmp_path):
    # FFmpeg's default probing decoded a frame of every stream at open: a 2.0 GB peak for this 2.5 MB file.
    path = many_stream_video(tmp_path / "streams.mkv", streams=100)
    check = (
        "import resource\n"
        "from models.media.decode_budget import DecodeBudget\n"
        "from models.media.video import FrameSelection, VideoLimits, sample_video\n"
        "limits = VideoLimits(max_duration_s=60, max_source_pixels=8192 * 4320, max_frames=8, target_pixels_per_frame=10**5)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"sampled = sample_video({str(path)!r}, FrameSelection(num_frames=2), limits, DecodeBudget(10**4, 10**10, 2))\n"
        "print(sampled.decoded_frames, sampled.info.width)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)\n"
    )
    result = subprocess.run([sys.executable, "-c", check], check=True, capture_output=True, text=True)
    decoded, grown_bytes = result.stdout.strip().splitlines()

    assert decoded == "1 3840"  # the first video stream only, one frame
    assert int(grown_bytes) < 300 * 1024**2
