"""A replica's share of a GPU, made real: Ray schedules fractions but does not isolate memory."""

import logging

from memory.budget import MemoryBudget, gpu_budget
from memory.probe import GpuBackend, MemorySnapshot

logger = logging.getLogger(__name__)


class NoGpuVisibleError(RuntimeError):
    """This process sees no GPU to budget against (no driver, no device, or CUDA hidden)."""


def allocator_fraction(share: float, *, total_bytes: int, context_bytes: int) -> float:
    """The allocator cap that keeps a ``share`` of the device, CUDA context included, inside the share.

    The context (driver, runtime, cuBLAS workspaces) is not allocated through torch's caching
    allocator, so ``set_per_process_memory_fraction(share)`` alone lets two 0.5 replicas use
    the whole device plus two contexts. Example: 0.5 of 80 GiB with a 0.5 GiB context caps the
    allocator at (40 - 0.5) / 80 = 0.49375.
    """
    if total_bytes <= 0:
        raise ValueError(f"total_bytes must be above zero, got {total_bytes}")
    fraction = (share * total_bytes - context_bytes) / total_bytes
    if fraction <= 0:
        raise ValueError(
            f"A {share:g} share of {total_bytes} bytes leaves nothing after the {context_bytes}-byte CUDA context; "
            "raise num_gpus or lower cuda_context_bytes"
        )
    return fraction


def limit_to_share(share: float, device_index: int = 0, *, context_bytes: int = 0) -> None:
    """Cap this process's CUDA caching allocator at ``share`` of the device, less its CUDA context.

    This is what ``PYTORCH_CUDA_MEMORY_FRACTION`` is often believed to do (PyTorch
    never reads that variable). Beyond the cap, allocations raise
    ``torch.OutOfMemoryError`` in this process instead of starving a neighbour
    holding the other half of the device.
    """
    import torch

    total = torch.cuda.get_device_properties(device_index).total_memory
    fraction = allocator_fraction(share, total_bytes=total, context_bytes=context_bytes)
    torch.cuda.set_per_process_memory_fraction(fraction, device_index)
    logger.info(
        "CUDA allocator on device %d capped at %.2f%% of the device (a %g share less a %d-byte context)",
        device_index, fraction * 100, share, context_bytes,
    )


def measure_gpu_budget(
    *, share: float, context_bytes: int, reserve_bytes: int, backend: GpuBackend | None = None, device_index: int = 0,
    reserve_name: str = "activation reserve",
) -> MemoryBudget:
    """The budget of this replica's share of its device, measured now."""
    snapshot = MemorySnapshot.measure(backend)
    if len(snapshot.gpus) <= device_index:
        raise NoGpuVisibleError(
            f"No GPU {device_index} visible to this process (probe: {snapshot.gpu_backend}, "
            f"{len(snapshot.gpus)} device(s)); the GPU group needs num_gpus > 0 on a node with a driver"
        )
    return gpu_budget(
        snapshot.gpus[device_index], share=share, context_bytes=context_bytes, reserve_bytes=reserve_bytes,
        reserve_name=reserve_name,
    )
