"""Small JPEG data URLs of sampled frames, for people to see what the model saw (the page at ``/``)."""

import base64
import io

import numpy as np
from PIL import Image

THUMBNAIL_LONG_SIDE_PX = 160
_JPEG_QUALITY = 70


def frame_thumbnails(frames: np.ndarray, *, long_side_px: int = THUMBNAIL_LONG_SIDE_PX) -> list[str]:
    """One ``data:image/jpeg;base64,...`` URL per frame of a ``T x H x W x 3`` ``uint8`` array.

    A frame is scaled so that its longer side is at most ``long_side_px`` (never enlarged): a 160 px
    thumbnail of a 448 x 448 frame is about 4 KB, so 32 of them add about 170 KB of base64 to an answer."""
    thumbnails = []
    for frame in frames:
        image = Image.fromarray(frame)
        image.thumbnail((long_side_px, long_side_px))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
        thumbnails.append("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
    return thumbnails
