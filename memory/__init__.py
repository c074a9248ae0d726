"""How a model gets into memory and stays healthy there. Knows nothing of Ray or HTTP."""

from memory.probe import GpuDeviceMemory, MemorySnapshot, format_gib

__all__ = ["GpuDeviceMemory", "MemorySnapshot", "format_gib"]
