"""One identity for each image and each sampled video: the key of every media cache, on every engine.

A media part's identity is a hash of:

- its **source**: the owner and the content hash of the bytes it came from (a file's sha256 from the store, or the
  sha256 of a data URL's payload), digested once at the edge (:func:`media_source`). The owner is in it for the
  reason the frame cache keys on it: a cache hit must not tell one API key that another sent the same bytes;
- what was taken from those bytes: the **frame times** of a video's sampled frames, and the **pixel size** after
  resizing (frames, height, width).

So the same file asked about with the same sampling gets the same identity on any replica and any engine (the
transformers engine's encoder cache, vLLM's ``multi_modal_uuids``, the affinity router), and anything that changes
the pixels the model sees (another window of the video, fewer frames after a shrink, another pixel budget) gets
another one. The identity is a property of the part (:attr:`models.requests.VideoPart.media_id`): a part derived
from another (shrunk, cut into a segment) carries the source and is identified by what it now holds.
"""

import hashlib

ID_HEX_CHARS = 32  # 128 bits: no two different media meet by chance


def media_source(owner: str, content_sha256: str) -> str:
    """The digest of who sent which bytes: ``owner`` (an API key's hash, or anonymous) and the bytes' sha256."""
    return hashlib.sha256(f"{owner}\0{content_sha256}".encode()).hexdigest()[:ID_HEX_CHARS]


def content_sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def media_id(kind: str, source: str, shape: tuple[int, ...], timestamps_s: tuple[float, ...] = ()) -> str:
    """The identity of ``kind`` (image, video) media from ``source`` holding pixels of ``shape`` at ``timestamps_s``.

    Frame times are written to the microsecond: the sampler's times, not float noise, decide equality."""
    times = ",".join(f"{time_s:.6f}" for time_s in timestamps_s)
    dims = "x".join(str(int(dim)) for dim in shape)
    return hashlib.sha256(f"{kind}\0{source}\0{dims}\0{times}".encode()).hexdigest()[:ID_HEX_CHARS]
