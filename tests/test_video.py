"""Frame sampling on real files written with PyAV: every promised format, VFR, rotation, limits, bad files."""


import media_factory
import numpy as np
import pytest

from models.media import inputs as media
from models.media.video import FrameSelection, VideoLimits, sample_video

pytestmark = pytest.mark.unit

LIMITS = VideoLimits(max_duration_s=3600, max_source_pixels=10**8, max_frames=64, target_pixels_per_frame=10**8)


def _indices(sampled, num_frames: int) -> list[int]:
    return [media_factory.frame_index_of(frame, num_frames) for frame in sampled.frames]


@pytest.mark.parametrize("kind", sorted(media_factory.VIDEO_KINDS))
def test_every_format_gives_the_uniform_frames_at_their_times(kind):
    # 24 frames at 12 fps = 2 s; targets 0.25, 0.75, 1.25, 1.75 s are frames 3, 9, 15, 21.
    data = media_factory.video_bytes(kind, num_frames=24, fps=12)

    sampled = sample_video(data, FrameSelection(num_frames=4), LIMITS)

    assert sampled.frames.shape == (4, 48, 64, 3)
    assert sampled.timestamps_s == pytest.approx((0.25, 0.75, 1.25, 1.75), abs=1e-3)
    assert _indices(sampled, 24) == [3, 9, 15, 21]
    assert sampled.info.duration_s == pytest.approx(2.0)


@pytest.mark.parametrize("kind", ["mp4", "mkv", "webm"])
def test_a_long_video_is_sampled_by_seeking_not_by_decoding_everything(kind):
    # 120 s at 2 fps (240 frames; colours repeat after 256), a keyframe every 2 s.
    data = media_factory.video_bytes(kind, num_frames=240, fps=2, gop=4, width=32, height=32)

    sampled = sample_video(data, FrameSelection(num_frames=4), LIMITS)

    assert sampled.timestamps_s == pytest.approx((15.0, 45.0, 75.0, 105.0), abs=1e-3)
    assert _indices(sampled, 240) == [30, 90, 150, 210]
    assert sampled.seeks >= 3
    assert sampled.decoded_frames < 240 / 4


def test_a_short_video_is_decoded_straight_through_without_seeking():
    # One keyframe: seeking could only land on frame 0 again, so the sampler decodes on.
    data = media_factory.video_bytes("mp4", num_frames=120, fps=12, gop=240)

    sampled = sample_video(data, FrameSelection(num_frames=8), LIMITS)

    assert sampled.seeks == 0
    assert sampled.decoded_frames <= 120
    assert _indices(sampled, 120) == [8, 23, 38, 53, 68, 83, 98, 113]  # targets (i + 0.5) * 1.25 s


@pytest.mark.parametrize("kind", ["mp4", "mkv"])
def test_fps_sampling_takes_a_frame_every_interval(kind):
    data = media_factory.video_bytes(kind, num_frames=48, fps=12)  # 4 s

    sampled = sample_video(data, FrameSelection(fps=2), LIMITS)

    assert sampled.timestamps_s == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5], abs=1e-3)
    assert _indices(sampled, 48) == [0, 6, 12, 18, 24, 30, 36, 42]
    assert sampled.effective_fps == 2


def test_fps_sampling_past_the_frame_cap_lowers_the_rate_to_cover_the_whole_video():
    data = media_factory.video_bytes("mp4", num_frames=120, fps=12)  # 10 s; 10 fps would be 100 frames
    limits = VideoLimits(max_duration_s=60, max_source_pixels=10**8, max_frames=5, target_pixels_per_frame=10**8)

    sampled = sample_video(data, FrameSelection(fps=10), limits)

    assert sampled.effective_fps == pytest.approx(0.5)
    assert sampled.timestamps_s == pytest.approx([0.0, 2.0, 4.0, 6.0, 8.0], abs=1e-3)


def test_variable_frame_rate_uses_each_frames_own_time():
    times = [0.0, 0.1, 0.2, 1.5, 1.6, 3.0, 3.05, 3.1]
    data = media_factory.video_bytes("mp4", timestamps_s=times, fps=10)

    sampled = sample_video(data, FrameSelection(fps=1), LIMITS)

    # Targets 0, 1, 2, 3 s: the first frame at or after each.
    assert sampled.timestamps_s == pytest.approx((0.0, 1.5, 3.0, 3.0), abs=1e-3)
    assert _indices(sampled, len(times)) == [0, 3, 5, 5]


@pytest.mark.parametrize("kind", ["mkv", "webm"])
def test_a_header_without_a_duration_gets_it_from_the_packets(kind):
    data = media_factory.video_bytes(kind, num_frames=24, fps=12, with_duration=False)

    sampled = sample_video(data, FrameSelection(num_frames=4), LIMITS)

    assert sampled.info.duration_from == "packets"
    assert sampled.info.duration_s == pytest.approx(2.0, abs=0.1)
    assert _indices(sampled, 24) == [3, 9, 15, 21]


@pytest.mark.parametrize(("rotation", "white_edge"), [(90, "left"), (-90, "right"), (180, "bottom")])
def test_rotation_metadata_is_applied_to_the_pixels(rotation, white_edge):
    # A 64x32 frame whose top quarter is white, stored with a display rotation.
    data = media_factory.video_bytes("mp4", rotation_degrees=rotation, pattern="top", width=64, height=32)

    sampled = sample_video(data, FrameSelection(num_frames=1), LIMITS)

    frame = sampled.frames[0].astype(int).sum(axis=2)
    assert sampled.frames.shape[1:3] == ((64, 32) if rotation % 180 else (32, 64))
    edges = {"left": frame[:, :4], "right": frame[:, -4:], "top": frame[:4], "bottom": frame[-4:]}
    assert edges[white_edge].mean() > 700
    assert all(pixels.mean() < 700 for edge, pixels in edges.items() if edge != white_edge)
    assert sampled.info.rotation_degrees == rotation % 360


def test_frames_are_scaled_to_the_pixel_budget_keeping_aspect():
    data = media_factory.video_bytes("webm", num_frames=6, fps=6, width=320, height=240)
    limits = VideoLimits(max_duration_s=60, max_source_pixels=10**8, max_frames=8, target_pixels_per_frame=4800)

    sampled = sample_video(data, FrameSelection(num_frames=2), limits)

    _, height, width, _ = sampled.frames.shape
    assert height * width <= 4800
    assert width / height == pytest.approx(320 / 240, rel=0.05)


def test_more_frames_asked_than_the_video_has_repeats_the_last():
    data = media_factory.video_bytes("mp4", num_frames=3, fps=3)

    sampled = sample_video(data, FrameSelection(num_frames=6), LIMITS)

    assert sampled.frames.shape[0] == 6
    assert list(sampled.timestamps_s) == sorted(sampled.timestamps_s)


class TestLimits:
    def test_a_video_longer_than_the_limit_is_refused_before_decoding(self):
        data = media_factory.video_bytes("mp4", num_frames=48, fps=12)
        limits = VideoLimits(max_duration_s=3, max_source_pixels=10**8, max_frames=8, target_pixels_per_frame=10**8)

        with pytest.raises(media.MediaTooLargeError, match="4.0 s long; the limit is 3 s"):
            sample_video(data, FrameSelection(num_frames=2), limits)

    def test_a_duration_read_from_packets_is_checked_too(self):
        data = media_factory.video_bytes("mkv", num_frames=48, fps=12, with_duration=False)
        limits = VideoLimits(max_duration_s=3, max_source_pixels=10**8, max_frames=8, target_pixels_per_frame=10**8)

        with pytest.raises(media.MediaTooLargeError, match="the limit is 3 s"):
            sample_video(data, FrameSelection(num_frames=2), limits)

    def test_more_frames_than_the_limit_is_refused(self):
        limits = VideoLimits(max_duration_s=60, max_source_pixels=10**8, max_frames=8, target_pixels_per_frame=10**8)

        with pytest.raises(media.MediaTooLargeError, match="9 frames asked; the limit is 8"):
            sample_video(media_factory.video_bytes(), FrameSelection(num_frames=9), limits)

    def test_frames_over_the_source_pixel_limit_are_refused(self):
        limits = VideoLimits(max_duration_s=60, max_source_pixels=3000, max_frames=8, target_pixels_per_frame=10**8)

        with pytest.raises(media.MediaTooLargeError, match="64x48 = 3072 pixels; the limit is 3000"):
            sample_video(media_factory.video_bytes(), FrameSelection(num_frames=2), limits)


class TestBadFiles:
    def test_an_audio_only_file_says_so(self):
        with pytest.raises(media.AudioOnlyError, match="audio but no video stream"):
            sample_video(media_factory.audio_only_bytes(), FrameSelection(num_frames=4), LIMITS)

    def test_containers_outside_the_served_ones_never_reach_a_demuxer(self):
        gif = media_factory.image_bytes("GIF", width=32, height=32)  # FFmpeg's gif demuxer would read it as video

        with pytest.raises(media.NotAVideoError, match=r"served here \(MP4/MOV, WebM/Matroska and AVI\): its first bytes are 474946"):
            sample_video(gif, FrameSelection(num_frames=4), LIMITS)

    @pytest.mark.parametrize("garbage", [b"garbage" * 100, b"\x1a\x45\xdf\xa3" + b"\0" * 50, b""])
    def test_a_file_that_is_not_a_video_says_so(self, garbage):
        with pytest.raises(media.NotAVideoError, match="does not open as a video container"):
            sample_video(garbage, FrameSelection(num_frames=4), LIMITS)

    def test_a_truncated_mp4_says_so(self):
        data = media_factory.video_bytes("mp4", num_frames=24)

        with pytest.raises(media.NotAVideoError, match="truncated"):
            sample_video(data[: len(data) // 2], FrameSelection(num_frames=4), LIMITS)

    def test_a_truncated_mkv_says_where_it_ends(self):
        data = media_factory.video_bytes("mkv", num_frames=240, fps=12, width=64, height=64)  # 20 s

        with pytest.raises(media.TruncatedVideoError, match="ends at .* but its header says 20.00 s"):
            sample_video(data[: len(data) // 3], FrameSelection(num_frames=4), LIMITS)

    def test_a_container_with_corrupt_packets_says_so(self):
        data = bytearray(media_factory.video_bytes("mkv", num_frames=48, fps=12, width=64, height=64))
        # Overwrite the middle of the file (the frame data) with noise, keeping the header and index.
        noise = np.random.default_rng(0).integers(0, 256, size=len(data) // 2, dtype=np.uint8).tobytes()
        start = len(data) // 4
        data[start : start + len(noise)] = noise

        with pytest.raises(media.CorruptVideoError, match="corrupt: .* packets read do not decode"):
            sample_video(bytes(data), FrameSelection(num_frames=4), LIMITS)

    def test_zero_frames_is_a_programming_error(self):
        with pytest.raises(ValueError, match="at least 1"):
            FrameSelection(num_frames=0)

    def test_fps_and_frames_together_is_a_programming_error(self):
        with pytest.raises(ValueError, match="exactly one"):
            FrameSelection(num_frames=2, fps=1.0)
