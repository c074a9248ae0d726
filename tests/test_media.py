import base64

import numpy as np
import pytest

import media_factory
from models import media

LARGE = 10**8


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


class TestDataUrls:
    def test_a_png_data_url_decodes_to_its_bytes(self):
        png = media_factory.image_bytes("PNG")

        parsed = media.parse_data_url(_data_url("image/png", png), allowed_mime_types=media.IMAGE_MIME_TYPES)

        assert parsed == media.DataUrl(mime_type="image/png", payload=png)

    @pytest.mark.parametrize("url", ["https://example.com/cat.png", "file:///etc/passwd", "/etc/passwd", "ftp://x/y"])
    def test_anything_but_a_data_url_is_refused_without_fetching(self, url):
        with pytest.raises(media.InvalidDataUrlError, match="Only data URLs are accepted"):
            media.parse_data_url(url, allowed_mime_types=media.IMAGE_MIME_TYPES)

    def test_invalid_base64_is_refused(self):
        with pytest.raises(media.InvalidDataUrlError, match="does not decode"):
            media.parse_data_url("data:image/png;base64,not*base64!", allowed_mime_types=media.IMAGE_MIME_TYPES)

    def test_a_data_url_that_is_not_base64_is_refused(self):
        with pytest.raises(media.InvalidDataUrlError, match="base64-encoded"):
            media.parse_data_url("data:image/png,rawbytes", allowed_mime_types=media.IMAGE_MIME_TYPES)

    def test_a_data_url_without_a_comma_is_refused(self):
        with pytest.raises(media.InvalidDataUrlError, match="no ','"):
            media.parse_data_url("data:image/png;base64", allowed_mime_types=media.IMAGE_MIME_TYPES)

    @pytest.mark.parametrize(
        ("mime", "allowed"),
        [("application/pdf", media.IMAGE_MIME_TYPES), ("video/mp4", media.IMAGE_MIME_TYPES), ("image/gif", media.IMAGE_MIME_TYPES), ("image/png", media.VIDEO_MIME_TYPES)],
    )
    def test_an_unsupported_type_names_the_supported_ones(self, mime, allowed):
        with pytest.raises(media.UnsupportedMediaTypeError, match=mime.replace("/", ".")):
            media.parse_data_url(_data_url(mime, b"abc"), allowed_mime_types=allowed)

    def test_an_empty_payload_is_refused(self):
        with pytest.raises(media.MediaDecodeError, match="empty"):
            media.parse_data_url("data:image/png;base64,", allowed_mime_types=media.IMAGE_MIME_TYPES)


class TestImages:
    @pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP"])
    def test_real_images_decode_to_rgb_arrays(self, image_format):
        data = media_factory.image_bytes(image_format, width=64, height=48, seed=5)

        pixels = media.decode_image(data, max_pixels=LARGE, target_pixels=LARGE)

        assert pixels.shape == (48, 64, 3)
        assert pixels.dtype == np.uint8

    def test_lossless_png_round_trips_exactly(self):
        expected = np.random.default_rng(5).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)

        pixels = media.decode_image(media_factory.image_bytes("PNG", seed=5), max_pixels=LARGE, target_pixels=LARGE)

        np.testing.assert_array_equal(pixels, expected)

    def test_a_large_image_is_scaled_down_keeping_aspect(self):
        data = media_factory.image_bytes("PNG", width=400, height=200)

        pixels = media.decode_image(data, max_pixels=LARGE, target_pixels=20_000)

        height, width, _ = pixels.shape
        assert height * width <= 20_000
        assert width / height == pytest.approx(2.0, rel=0.05)

    def test_an_image_over_the_pixel_limit_is_refused_before_decoding(self):
        data = media_factory.image_bytes("PNG", width=300, height=200)

        with pytest.raises(media.MediaTooLargeError, match="300x200 = 60000 pixels; the limit is 59999"):
            media.decode_image(data, max_pixels=59_999, target_pixels=LARGE)

    @pytest.mark.parametrize("corrupt", [b"\x89PNG\r\n\x1a\n" + b"\0" * 64, b"not an image at all", b"\xff\xd8\xff"])
    def test_corrupt_images_give_a_clear_error(self, corrupt):
        with pytest.raises(media.MediaDecodeError, match="Image does not decode"):
            media.decode_image(corrupt, max_pixels=LARGE, target_pixels=LARGE)

    def test_a_truncated_png_gives_a_clear_error(self):
        data = media_factory.image_bytes("PNG", width=64, height=64)

        with pytest.raises(media.MediaDecodeError, match="Image does not decode"):
            media.decode_image(data[: len(data) // 2], max_pixels=LARGE, target_pixels=LARGE)


def _frame_index_of(pixels: np.ndarray, num_frames: int) -> int:
    """Which frame of a media_factory video this is, from its colour."""
    center = pixels[pixels.shape[0] // 2, pixels.shape[1] // 2].astype(int)
    distances = [np.abs(center - np.array(media_factory.frame_index_color(i))).sum() for i in range(num_frames)]
    return int(np.argmin(distances))


class TestVideoSampling:
    @pytest.mark.parametrize("kind", ["mp4", "webm"])
    def test_uniform_frames_at_the_right_times(self, kind):
        # 24 frames at 12 fps = 2 s; 4 targets at 0.25, 0.75, 1.25, 1.75 s = frames 3, 9, 15, 21.
        data = media_factory.video_bytes(kind, num_frames=24, fps=12)

        sampled = media.sample_video_frames(data, num_frames=4, max_pixels_per_frame=LARGE)

        assert sampled.frames.shape == (4, 48, 64, 3)
        assert sampled.timestamps_s == pytest.approx((0.25, 0.75, 1.25, 1.75), abs=1 / 12)
        assert [_frame_index_of(frame, 24) for frame in sampled.frames] == [3, 9, 15, 21]

    def test_a_long_video_is_sampled_by_seeking_to_the_right_frames(self):
        # 40 s at 6 fps, keyframe every 2 s: past the seek threshold.
        data = media_factory.video_bytes("mp4", num_frames=240, fps=6, gop=12, width=32, height=32)

        sampled = media.sample_video_frames(data, num_frames=4, max_pixels_per_frame=LARGE)

        assert sampled.timestamps_s == pytest.approx((5.0, 15.0, 25.0, 35.0), abs=1 / 6)
        assert [_frame_index_of(frame, 240) for frame in sampled.frames] == [30, 90, 150, 210]

    def test_more_frames_asked_than_the_video_has(self):
        data = media_factory.video_bytes("mp4", num_frames=3, fps=3)

        sampled = media.sample_video_frames(data, num_frames=6, max_pixels_per_frame=LARGE)

        assert sampled.frames.shape[0] == 6
        assert list(sampled.timestamps_s) == sorted(sampled.timestamps_s)

    def test_frames_are_scaled_to_the_pixel_budget(self):
        data = media_factory.video_bytes("webm", num_frames=6, fps=6, width=320, height=240)

        sampled = media.sample_video_frames(data, num_frames=2, max_pixels_per_frame=4800)

        _, height, width, _ = sampled.frames.shape
        assert height * width <= 4800
        assert width / height == pytest.approx(320 / 240, rel=0.05)

    def test_an_audio_only_file_says_so(self):
        with pytest.raises(media.MediaDecodeError, match="no video stream"):
            media.sample_video_frames(media_factory.audio_only_bytes(), num_frames=4, max_pixels_per_frame=LARGE)

    @pytest.mark.parametrize("corrupt", [b"garbage" * 100, b"\x1a\x45\xdf\xa3" + b"\0" * 50])
    def test_a_corrupt_file_gives_a_clear_error(self, corrupt):
        with pytest.raises(media.MediaDecodeError, match="Video does not"):
            media.sample_video_frames(corrupt, num_frames=4, max_pixels_per_frame=LARGE)

    def test_a_truncated_mp4_gives_a_clear_error(self):
        data = media_factory.video_bytes("mp4", num_frames=24)

        with pytest.raises(media.MediaDecodeError):
            media.sample_video_frames(data[: len(data) // 2], num_frames=4, max_pixels_per_frame=LARGE)

    def test_zero_frames_is_a_programming_error(self):
        with pytest.raises(ValueError, match="at least 1"):
            media.sample_video_frames(media_factory.video_bytes(), num_frames=0, max_pixels_per_frame=LARGE)
