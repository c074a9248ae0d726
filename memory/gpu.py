"""A replica's share of a GPU, made real: Ray schedules fractions but does not isolate memory."""

import logging

from memory.budget import MemoryBudget, gpu_budget
from memory.probe import GpuBackend, MemorySnapshot

logger = logging.getLogger(__name__)


class NoGpuVisibleError(RuntimeError):
    """This process sees no GPU to budget against (no driver, no device, or CUDA hidden)."""


def limit_to_share(share: float, device_index: int = 0) -> None:
    """Cap this process's CUDA caching allocator at ``share`` of the device.

    This is what ``PYTORCH_CUDA_MEMORY_FRACTION`` is often believed to do (PyTorch
    never reads that variable). Beyond the cap, allocations raise
    ``torch.OutOfMemoryError`` in this process instead of starving a neighbour
    holding the other half of the device.
    """
    import torch

    torch.cuda.set_per_process_memory_fraction(share, device_index)
    logger.info("CUDA allocator on device %d capped at %.0f%% of the device", device_index, share * 100)


def measure_gpu_budget(
    *, share: float, context_bytes: int, reserve_bytes: int, backend: GpuBackend | None = None, device_index: int = 0
) -> MemoryBudget:
    """The budget of this replica's share of its device, measured now."""
    snapshot = MemorySnapshot.measure(backend)
    if len(snapshot.gpus) <= device_index:
        raise NoGpuVisibleError(
            f"No GPU {device_index} visible to this process (probe: {snapshot.gpu_backend}, "
            f"{len(snapshot.gpus)} device(s)); the GPU group needs num_gpus > 0 on a node with a driver"
        )
    return gpu_budget(snapshot.gpus[device_index], share=share, context_bytes=context_bytes, reserve_bytes=reserve_bytes)
