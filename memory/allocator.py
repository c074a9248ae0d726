"""CUDA caching-allocator settings that really take effect, and a read-back of what did.

PyTorch reads ``PYTORCH_ALLOC_CONF`` (its alias ``PYTORCH_CUDA_ALLOC_CONF``)
once, when the allocator initialises; after that, changing the environment
does nothing. So :func:`allocator_env` turns config into environment variables
for the replica's ``runtime_env`` (set before the process imports torch), and
:func:`read_allocator_settings` reports, inside the running process, what the
allocator was configured with next to what was asked for.

Two pieces of folklore are refused outright: ``CUDA_LAUNCH_BLOCKING`` (it
serialises every kernel launch; a debugging switch) and
``PYTORCH_CUDA_MEMORY_FRACTION`` (PyTorch never reads it; the per-process
limit comes from the replica's GPU share through
``torch.cuda.set_per_process_memory_fraction``).
"""

import dataclasses
import difflib
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

ALLOC_CONF_ENV = "PYTORCH_ALLOC_CONF"
ALLOC_CONF_ALIAS_ENV = "PYTORCH_CUDA_ALLOC_CONF"
DEFAULT_ALLOCATOR_SETTINGS: dict[str, str] = {"expandable_segments": "True"}

_BOOLEAN = {"True", "False", "true", "false"}


def _is_int(value: str, minimum: int = 0) -> bool:
    return value.isdigit() and int(value) >= minimum


def _is_fraction(value: str) -> bool:
    try:
        return 0.0 < float(value) < 1.0
    except ValueError:
        return False


def _is_roundup_divisions(value: str) -> bool:
    # A power of two, or a list like [256:1,512:2,>:8].
    if value.startswith("[") and value.endswith("]"):
        return all(":" in item for item in value[1:-1].split(",") if item)
    return _is_int(value, 1) and int(value) & (int(value) - 1) == 0


# The keys PyTorch 2.14's allocator config parser knows (c10 AllocatorConfig /
# CUDAAllocatorConfig), each with a check of its value and what it takes.
KNOWN_ALLOCATOR_KEYS: dict[str, tuple[Any, str]] = {
    "backend": (lambda v: v in {"native", "cudaMallocAsync"}, "'native' or 'cudaMallocAsync'"),
    "expandable_segments": (lambda v: v in _BOOLEAN, "True or False"),
    "max_split_size_mb": (lambda v: _is_int(v, 20), "an integer number of MiB, at least 20"),
    "max_non_split_rounding_mb": (lambda v: _is_int(v, 1), "an integer number of MiB"),
    "garbage_collection_threshold": (_is_fraction, "a fraction between 0 and 1, e.g. 0.8"),
    "roundup_power2_divisions": (_is_roundup_divisions, "a power of two, or a list like [256:1,512:2,>:8]"),
    "release_lock_on_cudamalloc": (lambda v: v in _BOOLEAN, "True or False"),
    "graph_capture_record_stream_reuse": (lambda v: v in _BOOLEAN, "True or False"),
    "pinned_use_cuda_host_register": (lambda v: v in _BOOLEAN, "True or False"),
    "pinned_num_register_threads": (lambda v: _is_int(v, 1), "a positive integer"),
    "pinned_use_background_threads": (lambda v: v in _BOOLEAN, "True or False"),
    "pinned_reserve_segment_size_mb": (lambda v: _is_int(v, 1), "an integer number of MiB"),
    "pinned_max_round_threshold_mb": (lambda v: _is_int(v, 1), "an integer number of MiB"),
}
_REFUSED_KEYS = {
    "per_process_memory_fraction": (
        "the per-process memory fraction is set from the replica's GPU share "
        "(torch.cuda.set_per_process_memory_fraction); remove it from the allocator settings"
    ),
}
_FOLKLORE_ENV = {
    "CUDA_LAUNCH_BLOCKING": "it serialises every kernel launch (a debugging switch, never a serving default)",
    "PYTORCH_CUDA_MEMORY_FRACTION": "PyTorch never reads it; the GPU share sets the per-process memory fraction",
}


class AllocatorConfigError(ValueError):
    """Allocator settings PyTorch would reject or that would do nothing; the message names the key."""


def validate_allocator_settings(settings: dict[str, Any]) -> dict[str, str]:
    """Check every key and value against PyTorch's parser; return them as strings."""
    checked: dict[str, str] = {}
    problems = []
    for key, raw_value in settings.items():
        value = str(raw_value)
        if isinstance(raw_value, bool):
            value = "True" if raw_value else "False"
        if key in _REFUSED_KEYS:
            problems.append(f"{key}: {_REFUSED_KEYS[key]}")
            continue
        if key not in KNOWN_ALLOCATOR_KEYS:
            close = difflib.get_close_matches(key, KNOWN_ALLOCATOR_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(KNOWN_ALLOCATOR_KEYS))}"
            problems.append(f"{key}: not a PyTorch allocator key{hint}")
            continue
        is_valid, expected = KNOWN_ALLOCATOR_KEYS[key]
        if not is_valid(value):
            problems.append(f"{key}: {value!r} is not valid; expected {expected}")
            continue
        checked[key] = value
    if problems:
        raise AllocatorConfigError("Invalid CUDA allocator settings:\n  " + "\n  ".join(problems))
    return checked


def format_alloc_conf(settings: dict[str, str]) -> str:
    """``{'expandable_segments': 'True'}`` -> ``'expandable_segments:True'``."""
    return ",".join(f"{key}:{value}" for key, value in settings.items())


def parse_alloc_conf(conf: str) -> dict[str, str]:
    """Inverse of :func:`format_alloc_conf`; list values like ``[256:1,>:8]`` stay whole."""
    parsed: dict[str, str] = {}
    key, depth, token = None, 0, ""
    for char in conf + ",":
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == ":" and depth == 0 and key is None:
            key, token = token.strip(), ""
        elif char == "," and depth == 0:
            if key is not None:
                parsed[key] = token.strip()
            elif token.strip():
                parsed[token.strip()] = ""
            key, token = None, ""
        else:
            token += char
    return parsed


def allocator_env(settings: dict[str, Any] | None = None) -> dict[str, str]:
    """Environment variables for a replica's ``runtime_env`` so the settings precede CUDA start.

    Both names are set to the same value: the new name for current PyTorch,
    the alias for code and tools that still read the old one.
    """
    checked = validate_allocator_settings(DEFAULT_ALLOCATOR_SETTINGS if settings is None else settings)
    conf = format_alloc_conf(checked)
    return {ALLOC_CONF_ENV: conf, ALLOC_CONF_ALIAS_ENV: conf}


def refuse_folklore_env(environ: dict[str, str] | None = None) -> None:
    """Raise if the environment carries settings that slow serving down or do nothing."""
    environ = os.environ if environ is None else environ
    problems = [f"{name}={environ[name]!r}: {why}" for name, why in _FOLKLORE_ENV.items() if environ.get(name)]
    if problems:
        raise AllocatorConfigError("Remove these environment variables:\n  " + "\n  ".join(problems))


@dataclasses.dataclass(frozen=True)
class AllocatorReport:
    """What was asked for against what the allocator in this process uses."""

    requested: dict[str, str]
    effective: dict[str, str]
    backend: str | None
    cuda_initialized: bool
    notes: tuple[str, ...]

    @property
    def matches(self) -> bool:
        return all(self.effective.get(key) == value for key, value in self.requested.items())

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "matches": self.matches}


def read_allocator_settings(environ: dict[str, str] | None = None) -> AllocatorReport:
    """Read back, in this process, the settings the allocator was configured with.

    ``effective`` is PyTorch's own record of its allocator config; where CUDA
    is up and an allocation exists, ``expandable_segments`` is confirmed from
    the allocator's segments themselves.
    """
    import torch

    environ = os.environ if environ is None else environ
    requested_conf = environ.get(ALLOC_CONF_ENV) or environ.get(ALLOC_CONF_ALIAS_ENV) or ""
    notes = []
    both = environ.get(ALLOC_CONF_ENV), environ.get(ALLOC_CONF_ALIAS_ENV)
    if all(both) and both[0] != both[1]:
        notes.append(f"{ALLOC_CONF_ENV} and {ALLOC_CONF_ALIAS_ENV} differ; PyTorch uses {ALLOC_CONF_ENV}")
    effective = parse_alloc_conf(torch._C._accelerator_getAllocatorSettings())
    backend = None
    cuda_initialized = torch.cuda.is_initialized()
    if torch.cuda.is_available():
        backend = torch.cuda.get_allocator_backend()
        if cuda_initialized:
            segments = torch.cuda.memory_snapshot()
            if segments:
                expandable = any(segment.get("is_expandable", False) for segment in segments)
                effective["expandable_segments"] = "True" if expandable else "False"
                notes.append("expandable_segments confirmed from the allocator's segments")
    else:
        notes.append("no CUDA device in this process: the settings are recorded but no allocator uses them")
    return AllocatorReport(
        requested=parse_alloc_conf(requested_conf),
        effective=effective,
        backend=backend,
        cuda_initialized=cuda_initialized,
        notes=tuple(notes),
    )

