"""Measure memory: this process, the system, and the GPUs this process can see.

A :class:`MemorySnapshot` holds byte counts as ``int``, taken with
:meth:`MemorySnapshot.measure`; two snapshots subtract to a delta. GiB appears
only where a person reads it (:func:`format_gib`).

GPU figures come from a :class:`GpuBackend`: NVML where a driver is present
(device-wide free memory and every process using the device), else
``torch.cuda.mem_get_info``, else nothing. Without a driver, or with a
CPU-only torch, ``gpus`` is empty and nothing raises. Other processes on a
device are reported, never touched.

Fragmentation, per device, is what this process's caching allocator holds but
does not use: ``(reserved - allocated) / reserved``. ``inactive_split_bytes``
is the part of that locked in split blocks that only same-size requests can
reuse; ``num_alloc_retries`` counts the times the allocator had to free its
cache and retry a cudaMalloc, the usual sign that fragmentation is costing.
"""

import dataclasses
import json
import logging
import os
from typing import Any, Protocol

import psutil

logger = logging.getLogger(__name__)

_GIB = 1024**3
_CGROUP_V2_MEMORY_MAX = "/sys/fs/cgroup/memory.max"
_CGROUP_V1_MEMORY_LIMIT = "/sys/fs/cgroup/memory/memory.limit_in_bytes"
# cgroup v1 reports "no limit" as a huge page-aligned number rather than "max".
_CGROUP_V1_UNLIMITED_FLOOR_BYTES = 1 << 60


def format_gib(num_bytes: int | None) -> str:
    """Render a byte count for people: ``format_gib(3 * 1024**3) == '3.00 GiB'``.

    Below 1 GiB the unit steps down so small models stay readable: ``'1.50 MiB'``, ``'512 B'``.
    """
    if num_bytes is None:
        return "n/a"
    for unit, size in (("GiB", _GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(num_bytes) >= size:
            return f"{num_bytes / size:.2f} {unit}"
    return f"{num_bytes} B"


@dataclasses.dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on a device (NVML only; reported, never killed)."""

    pid: int
    used_bytes: int
    name: str | None = None


@dataclasses.dataclass(frozen=True)
class TorchAllocatorStats:
    """This process's CUDA caching allocator on one device (``torch.cuda.memory_stats``)."""

    allocated_bytes: int
    reserved_bytes: int
    peak_allocated_bytes: int
    inactive_split_bytes: int
    num_alloc_retries: int
    num_ooms: int

    @property
    def fragmentation_ratio(self) -> float:
        """Share of reserved memory not holding tensors: 0.0 is none, 0.4 means 40% idle in the cache."""
        if self.reserved_bytes <= 0:
            return 0.0
        return (self.reserved_bytes - self.allocated_bytes) / self.reserved_bytes

    def __sub__(self, other: "TorchAllocatorStats") -> "TorchAllocatorStats":
        return TorchAllocatorStats(
            **{field.name: getattr(self, field.name) - getattr(other, field.name) for field in dataclasses.fields(self)}
        )


@dataclasses.dataclass(frozen=True)
class GpuDeviceMemory:
    """One device as this process sees it; ``index`` is the CUDA index inside this process."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int
    other_processes: tuple[GpuProcess, ...] = ()
    torch: TorchAllocatorStats | None = None

    @property
    def used_bytes(self) -> int:
        return self.total_bytes - self.free_bytes

    def __sub__(self, other: "GpuDeviceMemory") -> "GpuDeviceMemory":
        torch_delta = None
        if self.torch is not None and other.torch is not None:
            torch_delta = self.torch - other.torch
        return GpuDeviceMemory(
            index=self.index,
            name=self.name,
            total_bytes=self.total_bytes - other.total_bytes,
            free_bytes=self.free_bytes - other.free_bytes,
            other_processes=(),
            torch=torch_delta,
        )

    def to_dict(self) -> dict[str, Any]:
        as_dict = dataclasses.asdict(self)
        as_dict["used_bytes"] = self.used_bytes
        if self.torch is not None:
            as_dict["torch"]["fragmentation_ratio"] = round(self.torch.fragmentation_ratio, 4)
        return as_dict


class GpuBackend(Protocol):
    """Where GPU figures come from; the one seam tests replace (there is no GPU here)."""

    name: str

    def devices(self) -> tuple[GpuDeviceMemory, ...]:
        """Every device visible to this process, measured now."""
        ...


class NoGpu:
    name = "none"

    def devices(self) -> tuple[GpuDeviceMemory, ...]:
        return ()


class FixedGpu:
    """A device that reports the given total and free bytes: for tests and what-if plans."""

    name = "fixed"

    def __init__(self, total_bytes: int, free_bytes: int, device_name: str = "simulated GPU") -> None:
        if not 0 <= free_bytes <= total_bytes:
            raise ValueError(f"free_bytes ({free_bytes}) must be between 0 and total_bytes ({total_bytes})")
        self.total_bytes = total_bytes
        self.free_bytes = free_bytes
        self._device_name = device_name

    def devices(self) -> tuple[GpuDeviceMemory, ...]:
        return (GpuDeviceMemory(0, self._device_name, self.total_bytes, self.free_bytes),)


class FileGpu:
    """A device whose total and free bytes are read from a JSON file at every measurement.

    ``{"total_bytes": ..., "free_bytes": ...}``, optionally with ``"name"`` and ``"torch"`` (the
    allocator's figures, :class:`TorchAllocatorStats`' fields); a missing file means no GPU.
    For tests and drills across processes (a Ray replica probes it while the
    test rewrites the file): memory short, then freed, with no real GPU.
    """

    name = "file"

    def __init__(self, path: str) -> None:
        self.path = path

    @staticmethod
    def write(path: str | os.PathLike, *, total_bytes: int, free_bytes: int, torch: dict[str, int] | None = None) -> None:
        """Write the file this probe reads, whole (a temporary file renamed over it): a replica probing it
        while a test or drill rewrites it never reads half of it."""
        raw: dict[str, Any] = {"total_bytes": total_bytes, "free_bytes": free_bytes}
        if torch is not None:
            raw["torch"] = torch
        temporary = f"{os.fspath(path)}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(raw, handle)
        os.replace(temporary, path)

    def devices(self) -> tuple[GpuDeviceMemory, ...]:
        try:
            with open(self.path, encoding="utf-8") as handle:
                raw = json.load(handle)
        except FileNotFoundError:
            return ()
        allocator = raw.get("torch")
        return (
            GpuDeviceMemory(
                0,
                raw.get("name", "simulated GPU"),
                int(raw["total_bytes"]),
                int(raw["free_bytes"]),
                torch=TorchAllocatorStats(**{key: int(value) for key, value in allocator.items()}) if allocator else None,
            ),
        )


class TorchCudaGpu:
    """``torch.cuda.mem_get_info``: device-wide free memory, no per-process list."""

    name = "torch.cuda"

    def devices(self) -> tuple[GpuDeviceMemory, ...]:
        import torch

        devices = []
        for index in range(torch.cuda.device_count()):
            free_bytes, total_bytes = torch.cuda.mem_get_info(index)
            devices.append(
                GpuDeviceMemory(
                    index=index,
                    name=torch.cuda.get_device_name(index),
                    total_bytes=int(total_bytes),
                    free_bytes=int(free_bytes),
                    torch=torch_allocator_stats(index),
                )
            )
        return tuple(devices)


class NvmlGpu:
    """NVML: device-wide figures and every process using each visible device."""

    name = "nvml"

    def __init__(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml

    def devices(self) -> tuple[GpuDeviceMemory, ...]:
        nvml = self._nvml
        own_pid = os.getpid()
        devices = []
        for cuda_index, handle in enumerate(self._visible_handles()):
            info = nvml.nvmlDeviceGetMemoryInfo(handle)
            others = []
            for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.pid == own_pid:
                    continue
                others.append(
                    GpuProcess(pid=int(process.pid), used_bytes=int(process.usedGpuMemory or 0), name=_process_name(process.pid))
                )
            devices.append(
                GpuDeviceMemory(
                    index=cuda_index,
                    name=_as_text(nvml.nvmlDeviceGetName(handle)),
                    total_bytes=int(info.total),
                    free_bytes=int(info.free),
                    other_processes=tuple(others),
                    torch=torch_allocator_stats(cuda_index),
                )
            )
        return tuple(devices)

    def _visible_handles(self) -> list[Any]:
        """NVML numbers every physical device; CUDA_VISIBLE_DEVICES picks and orders ours."""
        nvml = self._nvml
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        handles = []
        for entry in (item.strip() for item in visible.split(",")):
            if not entry:
                continue
            if entry.isdigit():
                handles.append(nvml.nvmlDeviceGetHandleByIndex(int(entry)))
            else:
                handles.append(nvml.nvmlDeviceGetHandleByUUID(entry))
        return handles


GPU_PROBE_FILE_ENV = "VIDEO_DETECTIVE_GPU_PROBE_FILE"


def detect_gpu_backend() -> GpuBackend:
    """``$VIDEO_DETECTIVE_GPU_PROBE_FILE`` if set (tests, drills), else NVML if a driver answers,
    else torch.cuda if it sees a device, else no GPU. Never raises."""
    if os.environ.get(GPU_PROBE_FILE_ENV):
        return FileGpu(os.environ[GPU_PROBE_FILE_ENV])
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return NoGpu()
    try:
        return NvmlGpu()
    except Exception as error:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, missing module...
        logger.debug("NVML unavailable (%s); trying torch.cuda", error)
    try:
        import torch

        if torch.cuda.is_available():
            return TorchCudaGpu()
    except Exception as error:  # noqa: BLE001 - a CPU-only or broken CUDA build means no GPU
        logger.debug("torch.cuda unavailable (%s)", error)
    return NoGpu()


def torch_allocator_stats(device_index: int) -> TorchAllocatorStats | None:
    """This process's allocator figures for a device, or ``None`` before CUDA is initialised here."""
    try:
        import torch

        if not torch.cuda.is_initialized():
            return None
        stats = torch.cuda.memory_stats(device_index)
    except Exception as error:  # noqa: BLE001 - a device in an error state must not break measuring
        logger.warning("torch.cuda.memory_stats(%d) failed: %s", device_index, error)
        return None
    return TorchAllocatorStats(
        allocated_bytes=int(stats.get("allocated_bytes.all.current", 0)),
        reserved_bytes=int(stats.get("reserved_bytes.all.current", 0)),
        peak_allocated_bytes=int(stats.get("allocated_bytes.all.peak", 0)),
        inactive_split_bytes=int(stats.get("inactive_split_bytes.all.current", 0)),
        num_alloc_retries=int(stats.get("num_alloc_retries", 0)),
        num_ooms=int(stats.get("num_ooms", 0)),
    )


@dataclasses.dataclass(frozen=True)
class MemorySnapshot:
    """Byte counts measured at one moment.

    ``cgroup_limit_bytes`` is ``None`` where no container limit applies;
    ``gpus`` is empty where this process sees no GPU.
    """

    process_rss_bytes: int
    system_total_bytes: int
    system_available_bytes: int
    cgroup_limit_bytes: int | None = None
    gpus: tuple[GpuDeviceMemory, ...] = ()
    gpu_backend: str = "none"

    @classmethod
    def measure(cls, gpu_backend: GpuBackend | None = None) -> "MemorySnapshot":
        backend = gpu_backend if gpu_backend is not None else default_gpu_backend()
        virtual = psutil.virtual_memory()
        try:
            gpus = backend.devices()
        except Exception as error:  # noqa: BLE001 - a failing driver is reported, not raised
            logger.warning("GPU probe %s failed: %s", backend.name, error)
            gpus = ()
        return cls(
            process_rss_bytes=int(psutil.Process(os.getpid()).memory_info().rss),
            system_total_bytes=int(virtual.total),
            system_available_bytes=int(virtual.available),
            cgroup_limit_bytes=read_cgroup_limit_bytes(),
            gpus=gpus,
            gpu_backend=backend.name,
        )

    @property
    def available_bytes(self) -> int:
        """What this process could still get from the host: system available, capped by the cgroup."""
        if self.cgroup_limit_bytes is None:
            return self.system_available_bytes
        return min(self.system_available_bytes, max(0, self.cgroup_limit_bytes - self.process_rss_bytes))

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
            gpu_backend=self.gpu_backend,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "process_rss_bytes": self.process_rss_bytes,
            "system_total_bytes": self.system_total_bytes,
            "system_available_bytes": self.system_available_bytes,
            "cgroup_limit_bytes": self.cgroup_limit_bytes,
            "gpu_backend": self.gpu_backend,
            "gpus": [gpu.to_dict() for gpu in self.gpus],
        }


_default_backend: GpuBackend | None = None


def default_gpu_backend() -> GpuBackend:
    """The process-wide backend, detected once."""
    global _default_backend
    if _default_backend is None:
        _default_backend = detect_gpu_backend()
        logger.info("GPU memory probe: %s", _default_backend.name)
    return _default_backend


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


def _process_name(pid: int) -> str | None:
    try:
        return psutil.Process(pid).name()
    except (psutil.Error, OSError):
        return None  # another container's process, or already gone


def _as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
