"""Measure memory: this process, the system, and (where there is one) the GPU.

A :class:`MemorySnapshot` holds byte counts as ``int``. It is taken with
:func:`MemorySnapshot.measure` and two snapshots subtract to a delta. GiB only
appears where a person reads it (:func:`format_gib`).

Nothing here raises for a missing GPU: without a driver or with CPU-only torch
the ``gpus`` list is empty.
"""

import dataclasses
import logging
import os
from typing import Any

import psutil

logger = logging.getLogger(__name__)

_GIB = 1024**3
_CGROUP_V2_MEMORY_MAX = "/sys/fs/cgroup/memory.max"
_CGROUP_V1_MEMORY_LIMIT = "/sys/fs/cgroup/memory/memory.limit_in_bytes"
# cgroup v1 reports "no limit" as a huge page-aligned number rather than "max".
_CGROUP_V1_UNLIMITED_FLOOR_BYTES = 1 << 60


def format_gib(num_bytes: int | None) -> str:
    """Render a byte count for people: ``format_gib(3 * 1024**3) == '3.00 GiB'``."""
    if num_bytes is None:
        return "n/a"
    return f"{num_bytes / _GIB:.2f} GiB"


@dataclasses.dataclass(frozen=True)
class GpuDeviceMemory:
    """One GPU device as seen from this process."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int

    def __sub__(self, other: "GpuDeviceMemory") -> "GpuDeviceMemory":
        return GpuDeviceMemory(
            index=self.index,
            name=self.name,
            total_bytes=self.total_bytes - other.total_bytes,
            free_bytes=self.free_bytes - other.free_bytes,
        )


@dataclasses.dataclass(frozen=True)
class MemorySnapshot:
    """Byte counts measured at one moment.

    ``cgroup_limit_bytes`` is ``None`` where no container limit applies.
    """

    process_rss_bytes: int
    system_total_bytes: int
    system_available_bytes: int
    cgroup_limit_bytes: int | None = None
    gpus: tuple[GpuDeviceMemory, ...] = ()

    @classmethod
    def measure(cls) -> "MemorySnapshot":
        virtual = psutil.virtual_memory()
        return cls(
            process_rss_bytes=int(psutil.Process(os.getpid()).memory_info().rss),
            system_total_bytes=int(virtual.total),
            system_available_bytes=int(virtual.available),
            cgroup_limit_bytes=read_cgroup_limit_bytes(),
            gpus=(),
        )

    def __sub__(self, other: "MemorySnapshot") -> "MemorySnapshot":
        """Field-wise difference; GPU devices are matched by position."""
        limit = None
        if self.cgroup_limit_bytes is not None and other.cgroup_limit_bytes is not None:
            limit = self.cgroup_limit_bytes - other.cgroup_limit_bytes
        return MemorySnapshot(
            process_rss_bytes=self.process_rss_bytes - other.process_rss_bytes,
            system_total_bytes=self.system_total_bytes - other.system_total_bytes,
            system_available_bytes=self.system_available_bytes - other.system_available_bytes,
            cgroup_limit_bytes=limit,
            gpus=tuple(mine - theirs for mine, theirs in zip(self.gpus, other.gpus)),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_cgroup_limit_bytes() -> int | None:
    """The memory limit of this process's cgroup, or ``None`` where none applies."""
    for path in (_CGROUP_V2_MEMORY_MAX, _CGROUP_V1_MEMORY_LIMIT):
        try:
            with open(path, encoding="ascii") as handle:
                raw = handle.read().strip()
        except OSError:
            continue
        if raw == "max":
            return None
        try:
            limit = int(raw)
        except ValueError:
            logger.warning("Ignoring unreadable cgroup memory limit %r in %s", raw, path)
            return None
        return None if limit >= _CGROUP_V1_UNLIMITED_FLOOR_BYTES else limit
    return None
