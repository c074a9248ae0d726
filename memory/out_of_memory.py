"""Is this error an out-of-memory? One answer for the loading chain, the schedulers and the weight cache.

Out of memory shows up as types (``torch.OutOfMemoryError``, Python's ``MemoryError``) and, from CUDA
libraries and bitsandbytes, as a ``RuntimeError`` whose message says so.
"""

import torch

_OOM_MESSAGES = (
    "out of memory",
    "cuda error: out of memory",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "cuda_error_out_of_memory",
    "failed to allocate",
    "can't allocate memory",
    "cannot allocate memory",
)


def is_out_of_memory(error: BaseException) -> bool:
    """Types first (torch, MemoryError), then the messages CUDA, cuBLAS and bitsandbytes raise."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    if isinstance(error, RuntimeError):
        message = str(error).lower()
        return any(fragment in message for fragment in _OOM_MESSAGES)
    return False
