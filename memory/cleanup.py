"""Give memory back after a failed load or an out-of-memory: measured, not hoped for."""

import ctypes
import dataclasses
import gc
import logging

import psutil

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CleanupResult:
    """Bytes released by one cleanup; negative where usage grew meanwhile."""

    gpu_reserved_freed_bytes: int
    process_rss_freed_bytes: int
    collected_objects: int


def release_memory() -> CleanupResult:
    """Collect garbage, return cached CUDA blocks and IPC handles, reset peaks, trim the C heap.

    Call it after dropping every reference to what should go (a half-loaded
    model, the tensors of a failed request): it frees what nothing refers to.
    """
    reserved_before = _cuda_reserved_bytes()
    rss_before = _rss_bytes()
    collected = gc.collect()
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.ipc_collect()
            for index in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(index)
    except RuntimeError as error:  # a device in an error state: report, keep going
        logger.warning("CUDA cache release failed: %s", error)
    _malloc_trim()
    result = CleanupResult(
        gpu_reserved_freed_bytes=reserved_before - _cuda_reserved_bytes(),
        process_rss_freed_bytes=rss_before - _rss_bytes(),
        collected_objects=collected,
    )
    logger.info(
        "Cleanup freed %d GPU-reserved bytes and %d RSS bytes (%d objects collected)",
        result.gpu_reserved_freed_bytes,
        result.process_rss_freed_bytes,
        result.collected_objects,
    )
    return result


def _cuda_reserved_bytes() -> int:
    try:
        import torch

        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return 0
        return sum(int(torch.cuda.memory_reserved(index)) for index in range(torch.cuda.device_count()))
    except RuntimeError:
        return 0


def return_freed_heap() -> int:
    """Hand glibc's freed heap pages back to the OS (after a large upload passed through); bytes returned."""
    before = _rss_bytes()
    _malloc_trim()
    return max(0, before - _rss_bytes())


def _rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def _malloc_trim() -> None:
    """glibc keeps freed heap pages until asked; without this RSS hides what a cleanup freed."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc (musl, macOS): nothing to trim
