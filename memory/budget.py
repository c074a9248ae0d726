"""What one replica may spend on weights: its share of the device, less what it must keep free.

On a GPU: ``share x total``, capped by what is free on the device now (Ray
does not isolate GPU memory, so another process may already hold part of our
share), minus the CUDA context and the activation reserve for the largest
request the limits allow.

On a CPU: the configured bytes, capped by what the host has available now,
minus the activation reserve.

Example, a 0.5 share of an 80 GiB H100 with 30 GiB free, 0.5 GiB context and
2 GiB reserve: min(40, 30) - 0.5 - 2 = 27.5 GiB for weights.
"""

import dataclasses
from typing import Any, Literal

from memory.probe import GpuDeviceMemory, MemorySnapshot, format_gib

# What a CUDA context costs before any tensor: driver, runtime, cuBLAS/cuDNN
# workspaces. Measured figures run 300-600 MiB on Hopper with torch 2.x; this is
# the planning default, overridable where a replica measures its own.
DEFAULT_CUDA_CONTEXT_BYTES = 512 * 1024**2


class BudgetError(ValueError):
    """A budget that cannot be right (zero or negative share or bytes); the message names it."""


@dataclasses.dataclass(frozen=True)
class MemoryBudget:
    device: Literal["cuda", "cpu"]
    weights_bytes: int
    limit_bytes: int
    available_bytes: int
    context_bytes: int
    reserve_bytes: int
    reserve_name: str = "activation reserve"  # whose activations: the transformers engine's, or vLLM's own

    def explain(self) -> str:
        """The arithmetic, for logs and errors."""
        return (
            f"{self.device} budget {format_gib(self.weights_bytes)} = min(limit {format_gib(self.limit_bytes)}, "
            f"available {format_gib(self.available_bytes)}) - context {format_gib(self.context_bytes)} "
            f"- {self.reserve_name} {format_gib(self.reserve_bytes)}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "explanation": self.explain()}


def gpu_budget(
    device: GpuDeviceMemory, *, share: float, context_bytes: int, reserve_bytes: int, reserve_name: str = "activation reserve"
) -> MemoryBudget:
    """Budget on one GPU for a replica holding ``share`` of it (Ray's fractional ``num_gpus``)."""
    if not 0.0 < share <= 1.0:
        raise BudgetError(f"GPU share must be in (0, 1], got {share}; set num_gpus to a fraction such as 0.5")
    limit = int(device.total_bytes * share)
    available = min(limit, device.free_bytes)
    return MemoryBudget(
        device="cuda",
        weights_bytes=available - context_bytes - reserve_bytes,
        limit_bytes=limit,
        available_bytes=device.free_bytes,
        context_bytes=context_bytes,
        reserve_bytes=reserve_bytes,
        reserve_name=reserve_name,
    )


def cpu_budget(
    snapshot: MemorySnapshot, *, configured_bytes: int, reserve_bytes: int, reserve_name: str = "activation reserve"
) -> MemoryBudget:
    """Budget in host memory for a replica allowed ``configured_bytes``."""
    if configured_bytes <= 0:
        raise BudgetError(
            f"CPU memory budget must be above zero, got {configured_bytes} bytes; "
            "set it to the bytes this replica may use (e.g. its Ray 'memory' resource)"
        )
    available = snapshot.available_bytes
    return MemoryBudget(
        device="cpu",
        weights_bytes=min(configured_bytes, available) - reserve_bytes,
        limit_bytes=configured_bytes,
        available_bytes=available,
        context_bytes=0,
        reserve_bytes=reserve_bytes,
        reserve_name=reserve_name,
    )
