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

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_MIME_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
# The only decoders Pillow may run: without ``formats`` it sniffs every plugin it has (TGA, EPS through
# Ghostscript, ...), whatever the declared type.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
VIDEO_MIME_TYPES = frozenset(
    {"video/mp4", "video/webm", "video/x-matroska", "video/quicktime", "video/x-msvideo", "video/avi"}
)


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


class DecodeBudgetExceededError(MediaTooLargeError):
    """A request's videos need more decoding than its decode budget holds, even at one frame a target."""


class VideoWindowError(MediaError):
    """A window of the video (a segment's ``[start_s, end_s)``) that lies past its end."""


class DecodeStoppedError(MediaError):
    """The decode was stopped because its request ended (the client left, or the request timed out)."""


class NotAVideoError(MediaDecodeError):
    """The bytes do not open as a media container."""


class AudioOnlyError(MediaDecodeError):
    """The file has audio streams and no video stream."""


class NoVideoFramesError(MediaDecodeError):
    """The video stream holds no decodable frame."""


class TruncatedVideoError(MediaDecodeError):
    """The stream ends well before the duration its header states."""


class CorruptVideoError(MediaDecodeError):
    """The stream's packets do not decode."""


@dataclasses.dataclass(frozen=True)
class DataUrl:
    mime_type: str
    payload: bytes


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
            image = open_image(data)
            width, height = image.size
            if width * height > max_pixels:
                raise MediaTooLargeError(
                    f"Image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
                )
            image.load()
    except MediaError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise MediaDecodeError(f"Image does not decode ({len(data)} bytes): {error}") from error
    image = image.convert("RGB")
    if width * height > target_pixels:
        image = image.resize(scaled_size(width, height, target_pixels), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def open_image(data: bytes) -> Image.Image:
    """Open (header only, no pixels decoded) as PNG, JPEG or WebP; anything else is a :class:`MediaDecodeError`."""
    try:
        return Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.UnidentifiedImageError as error:
        raise MediaDecodeError(
            f"Image does not decode ({len(data)} bytes): it is not PNG, JPEG or WebP, the formats served here"
        ) from error


def scaled_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest even size with the same aspect ratio and at most ``max_pixels`` pixels."""
    scale = math.sqrt(max_pixels / (width * height))
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)
