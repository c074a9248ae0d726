import base64

import media_factory
import numpy as np
import pytest

from models.media import inputs as media

pytestmark = pytest.mark.unit

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

    @pytest.mark.parametrize("pillow_format", ["TGA", "BMP", "GIF", "TIFF"])
    def test_only_png_jpeg_and_webp_decoders_run_whatever_the_bytes_are(self, pillow_format):
        data = media_factory.image_bytes(pillow_format, width=32, height=32)  # Pillow writes it, and could read it

        with pytest.raises(media.MediaDecodeError, match="not PNG, JPEG or WebP"):
            media.decode_image(data, max_pixels=LARGE, target_pixels=LARGE)

    def test_a_truncated_png_gives_a_clear_error(self):
        data = media_factory.image_bytes("PNG", width=64, height=64)

        with pytest.raises(media.MediaDecodeError, match="Image does not decode"):
            media.decode_image(data[: len(data) // 2], max_pixels=LARGE, target_pixels=LARGE)
