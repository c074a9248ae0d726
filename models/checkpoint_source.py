"""A checkpoint in an object store (``s3://bucket/models/name``, any fsspec URL), fetched once per node.

Pods of a cluster share no filesystem, so ``model.source`` may name the checkpoint's folder in an object store
instead of a local path. Each node copies it into its own cache (``$VIDEO_DETECTIVE_CACHE/checkpoints``) the first
time a process there needs it; every later process on that node finds the copy:

- **Once per node**: a lock file serialises the processes of one node (replicas, the ingress, the planner); the
  first fetches, the others wait and then find the copy whole.
- **Whole or absent**: files land in a temporary folder beside the copy, which is renamed into place with its
  manifest (each file's size and ETag as the store listed them); a folder without a manifest is never used.
- **Fresh**: every use lists the source again (one listing call) and fetches anew when a file's size or ETag
  differs from the manifest's, so a checkpoint replaced in the store is not served stale.
- **Planning reads little**: the planner and the ingress read only the checkpoint's configs, tokenizer and
  processor files (``metadata_only=True``): a few MB, not the weights.
"""

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pathlib
import shutil
import uuid
from typing import Any, Iterator

import fsspec

logger = logging.getLogger(__name__)

MANIFEST = ".vd-fetched.json"
# What planning reads: configs, tokenizer and processor files, chat templates, remote code. Never the weights.
METADATA_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".py", ".tiktoken")


class CheckpointSourceError(RuntimeError):
    """The object store has no usable checkpoint at the URL (or cannot be reached); the message names the fix."""


def is_remote_source(source: str) -> bool:
    """Whether ``model.source`` names an object store (``s3://``, ``gs://``...) rather than a local folder."""
    return "://" in source and not source.startswith("file://")


def source_protocol_problem(source: str) -> str | None:
    """Why fsspec cannot open ``source``'s protocol here (``None`` when it can); no network is touched."""
    protocol = source.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as error:
        return f"fsspec cannot open {protocol}:// here ({error}); install its package (s3fs is installed, gcsfs for gs://)"
    return None


def local_copy_folder(url: str, cache_root: pathlib.Path, *, metadata_only: bool = False) -> pathlib.Path:
    """Where the node's copy of ``url`` lives (it may not exist yet)."""
    name = url.rstrip("/").rsplit("/", 1)[-1] or "checkpoint"
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return cache_root / "checkpoints" / f"{name}-{digest}{'-metadata' if metadata_only else ''}"


def fetch_checkpoint(
    url: str,
    cache_root: pathlib.Path,
    *,
    storage_options: dict[str, Any] | None = None,
    metadata_only: bool = False,
) -> pathlib.Path:
    """The node's local copy of the checkpoint at ``url``, fetched now if the node has none or a stale one."""
    folder = local_copy_folder(url, cache_root, metadata_only=metadata_only)
    fs, root = fsspec.core.url_to_fs(url, **{"use_listings_cache": False, **(storage_options or {})})
    root = root.rstrip("/")
    listing = _list_source(fs, root, url, metadata_only)
    with _node_lock(folder):
        if _manifest_files(folder) == listing:
            return folder
        logger.info("Fetching %s (%d files, %d bytes) into %s", url, len(listing),
                    sum(entry["bytes"] for entry in listing.values()), folder)
        partial = folder.with_name(f".{folder.name}.partial-{uuid.uuid4().hex[:8]}")
        try:
            for relative, entry in listing.items():
                target = partial / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(f"{root}/{relative}", str(target))
                if target.stat().st_size != entry["bytes"]:
                    raise CheckpointSourceError(
                        f"{url}/{relative}: fetched {target.stat().st_size} bytes, the store listed {entry['bytes']}"
                    )
            (partial / MANIFEST).write_text(json.dumps({"url": url, "files": listing}, indent=1, sort_keys=True))
            if folder.exists():
                shutil.rmtree(folder)
            os.rename(partial, folder)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return folder


def _list_source(fs: Any, root: str, url: str, metadata_only: bool) -> dict[str, dict[str, Any]]:
    """``relative path -> {bytes, etag}`` of every file under ``root`` (only metadata files when asked)."""
    try:
        found = fs.find(root, detail=True)
    except (OSError, ValueError) as error:
        raise CheckpointSourceError(f"model.source {url!r}: cannot list the object store ({error})") from error
    listing: dict[str, dict[str, Any]] = {}
    for path, info in found.items():
        if info.get("type") == "directory":
            continue
        relative = path[len(root):].lstrip("/")
        if not relative or (metadata_only and not relative.endswith(METADATA_SUFFIXES)):
            continue
        etag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("mtime")
        listing[relative] = {"bytes": int(info.get("size") or 0), "etag": str(etag) if etag is not None else None}
    if "config.json" not in listing:
        raise CheckpointSourceError(
            f"model.source {url!r} holds no config.json ({len(listing)} files there); upload the checkpoint folder "
            "(config.json, the weights, the tokenizer and processor files) under that prefix"
        )
    return dict(sorted(listing.items()))


def _manifest_files(folder: pathlib.Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return None


@contextlib.contextmanager
def _node_lock(folder: pathlib.Path) -> Iterator[None]:
    """One fetch of ``folder`` at a time on this node (every process of the node shares the lock file)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def checkpoint_folder(
    source: str, *, storage_options: dict[str, Any] | None = None, metadata_only: bool = False
) -> str:
    """A local folder holding the checkpoint ``source`` names: the folder itself, or this node's copy of an object
    store's (all of it, or with ``metadata_only`` only what planning reads)."""
    if not is_remote_source(source):
        return source.removeprefix("file://")
    from models.cache_dir import default_cache_dir

    return str(fetch_checkpoint(source, default_cache_dir(), storage_options=storage_options, metadata_only=metadata_only))
