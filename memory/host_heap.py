"""Keep a load's temporaries from inflating the host heap (glibc only; elsewhere a no-op).

Loading casts and quantizes weight by weight: an fp32 tensor becomes bf16, a
bf16 tensor becomes int8 or nf4, and each temporary is freed at once. glibc
serves allocations under its mmap threshold (which grows to 32 MiB as large
blocks are freed) from the heap and keeps freed heap memory, so those
temporaries pile up: measured here (``bench/load.py``, SmolVLM-500M on CPU), a
577 MiB int8 model peaked 1193-1465 MiB above its pre-load level, and a 404 MiB
nf4 model 644-1374 MiB. While loading, a 128 KiB threshold sends every
weight-sized block to mmap, which returns to the OS on free: peaks of 761 MiB
(1.32x) and 607 MiB (1.50x). Afterwards the thresholds go back up, so serving
does not pay an mmap per activation.
"""

import contextlib
import ctypes
import logging
from typing import Iterator

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
LOAD_MMAP_THRESHOLD_BYTES = 128 * 1024
# glibc's own ceiling for the dynamic mmap threshold, and twice that for trimming: its defaults once warmed up.
SERVING_MMAP_THRESHOLD_BYTES = 32 * 1024**2
SERVING_TRIM_THRESHOLD_BYTES = 64 * 1024**2


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 - present on glibc only
        return libc
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def returning_freed_memory(mmap_threshold_bytes: int = LOAD_MMAP_THRESHOLD_BYTES) -> Iterator[None]:
    """Within the block, freed blocks above ``mmap_threshold_bytes`` go straight back to the OS."""
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold_bytes)
    libc.mallopt(_M_TRIM_THRESHOLD, mmap_threshold_bytes)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, SERVING_MMAP_THRESHOLD_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, SERVING_TRIM_THRESHOLD_BYTES)
        libc.malloc_trim(0)
