"""Pre-quantized weights on local disk: a quantized load is done once per checkpoint, strategy and versions.

After a strategy quantizes a checkpoint (bitsandbytes int8 or nf4), the replica saves the quantized model
with transformers' own ``save_pretrained`` (bitsandbytes' serialization: the quantized weights, their
scales and the ``quantization_config`` in ``config.json``). The next load of the same checkpoint with the
same strategy reads that folder with ``from_pretrained`` instead of quantizing again.

- **Key**: the checkpoint's content (SHA-256 of its weight and config files, remembered per file path,
  size and modification time so a checkpoint is hashed once), the strategy (name, device, dtype), and the
  transformers, bitsandbytes and torch versions.
- **Atomic**: an entry is written into a temporary folder beside the entries and renamed into place with its
  manifest; two replicas writing the same entry both succeed, and the second rename loses harmlessly.
- **Bounded**: ``max_bytes`` over all entries; the least recently used go first; an entry larger than the
  bound is not kept.
- **Checked**: an entry is used only when its manifest matches the key and every file has the size and
  SHA-256 the manifest records; anything else is removed and rebuilt, never used. The manifest and sizes are
  checked before the load; the SHA-256 of the files runs on a thread beside ``from_pretrained`` (hashlib
  and safetensors both let go of the GIL), and a mismatch throws the loaded model away before anyone sees
  it. On SmolVLM-500M's int8 entry that hides the 0.3 s of hashing behind the load.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
import time
import uuid
from typing import Any

import bitsandbytes
import torch
import transformers

from memory.out_of_memory import is_out_of_memory
from memory.strategy import LoadStrategy

logger = logging.getLogger(__name__)

MANIFEST = "vd-manifest.json"
_DIGESTS = "checkpoint-digests.json"
_CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt")
_HASH_CHUNK_BYTES = 16 * 1024 * 1024


def file_sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    return {"transformers": transformers.__version__, "bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__}


@dataclasses.dataclass(frozen=True)
class CacheHit:
    folder: pathlib.Path
    bytes: int
    files: dict[str, dict[str, Any]]  # the manifest's: name -> bytes and sha256


class WeightCache:
    """Quantized checkpoints under ``root``; see the module docstring."""

    def __init__(
        self, root: pathlib.Path, *, max_bytes: int, shared_url: str = "", storage_options: dict[str, Any] | None = None
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._entries = root / "entries"
        self._entries.mkdir(parents=True, exist_ok=True)
        self._shared = SharedWeightStore(shared_url, storage_options) if shared_url else None

    # -- keys ----------------------------------------------------------------------------------

    def checkpoint_digest(self, model_path: str) -> str:
        """SHA-256 over the checkpoint's files (names and contents); each file hashed once per size and mtime."""
        folder = pathlib.Path(model_path).resolve()
        memo_path = self.root / _DIGESTS
        try:
            memo = json.loads(memo_path.read_text())
        except (OSError, json.JSONDecodeError):
            memo = {}
        combined = hashlib.sha256()
        changed = False
        for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_CHECKPOINT_SUFFIXES)):
            stat = path.stat()
            memo_key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
            if memo_key not in memo:
                memo[memo_key] = file_sha256(path)
                changed = True
            combined.update(f"{path.name}\0{memo[memo_key]}\0".encode())
        if changed:
            _write_atomically(memo_path, json.dumps(memo, indent=1))
        return combined.hexdigest()

    def key(self, model_path: str, strategy: LoadStrategy) -> dict[str, Any]:
        return {
            "checkpoint_sha256": self.checkpoint_digest(model_path),
            "strategy": strategy.to_dict(),
            "versions": versions(),
        }

    @staticmethod
    def entry_name(key: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]

    # -- read ----------------------------------------------------------------------------------

    def lookup(self, key: dict[str, Any]) -> CacheHit | None:
        """The entry's folder when it is whole and matches ``key``; a bad entry is removed (and ``None``)."""
        folder = self._entries / self.entry_name(key)
        if not folder.is_dir() and self._shared is not None:
            self._shared.pull(folder.name, self._entries)
        if not folder.is_dir():
            return None
        problem = _check_entry(folder, key)
        if problem is not None:
            self.reject(folder, problem)
            return None
        os.utime(folder / MANIFEST)  # last used: eviction goes by this
        manifest = json.loads((folder / MANIFEST).read_text())
        return CacheHit(folder, manifest["bytes"], manifest["files"])

    def reject(self, folder: pathlib.Path, problem: str) -> None:
        logger.warning("Weight cache entry %s is not used (%s); removing it, the model is quantized again", folder, problem)
        self.remove(folder)

    # -- write ---------------------------------------------------------------------------------

    def store(self, key: dict[str, Any], model: transformers.PreTrainedModel) -> pathlib.Path | None:
        """Save a quantized model as the entry for ``key``; its folder, or ``None`` when it is not kept."""
        final = self._entries / self.entry_name(key)
        if final.is_dir():
            return final
        temporary = self._entries / f".writing-{uuid.uuid4().hex}"
        try:
            model.save_pretrained(temporary)
            files = {path.name: {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
                     for path in sorted(temporary.iterdir()) if path.is_file()}
            total = sum(entry["bytes"] for entry in files.values())
            if total > self.max_bytes:
                logger.warning(
                    "Not caching the quantized model: %d bytes is over the weight cache's bound of %d bytes "
                    "(model.weight_cache_bytes)", total, self.max_bytes,
                )
                return None
            manifest = {"key": key, "files": files, "bytes": total, "created": time.time()}
            (temporary / MANIFEST).write_text(json.dumps(manifest, indent=1))
            try:
                os.rename(temporary, final)
            except OSError:
                if final.is_dir():  # another replica stored the same entry first: theirs is as good
                    return final
                raise
            logger.info("Stored the quantized model in the weight cache at %s (%d bytes)", final, total)
        finally:
            if temporary.exists():
                shutil.rmtree(temporary, ignore_errors=True)
        if self._shared is not None:
            self._shared.push(final)
        self.evict(keep=final)
        return final

    def entries(self) -> list[tuple[pathlib.Path, int, float]]:
        """(folder, bytes, last used) of every whole entry."""
        found = []
        for folder in self._entries.iterdir():
            manifest = folder / MANIFEST
            if folder.name.startswith(".") or not manifest.is_file():
                continue
            try:
                found.append((folder, json.loads(manifest.read_text())["bytes"], manifest.stat().st_mtime))
            except (OSError, json.JSONDecodeError, KeyError):
                continue
        return found

    def evict(self, *, keep: pathlib.Path | None = None) -> None:
        """Remove the least recently used entries until all fit in ``max_bytes``."""
        entries = sorted(self.entries(), key=lambda entry: entry[2])
        total = sum(size for _, size, _ in entries)
        for folder, size, _ in entries:
            if total <= self.max_bytes:
                break
            if folder == keep:
                continue
            logger.info("Weight cache over its bound (%d > %d bytes): removing %s", total, self.max_bytes, folder)
            self.remove(folder)
            total -= size

    def remove(self, folder: pathlib.Path) -> None:
        """Move the entry out of the way first (a reader never finds half of it), then delete it."""
        doomed = self._entries / f".removing-{uuid.uuid4().hex}"
        try:
            os.rename(folder, doomed)
        except OSError:
            return
        shutil.rmtree(doomed, ignore_errors=True)


class SharedWeightStore:
    """The weight cache's shared tier (``model.weight_cache_url``): entries in an object store every node reads.

    A node that quantized a checkpoint pushes its entry there (the files first, the manifest last, so an entry
    with a manifest is whole); a node that misses locally pulls the entry into its own cache, where it is checked
    like any local entry (manifest, sizes, SHA-256) before it is used. The store's own failures only cost the
    quantization they would have saved: they are logged, never raised."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        import fsspec

        self.url = url
        self._fs, root = fsspec.core.url_to_fs(url, **{"use_listings_cache": False, **(storage_options or {})})
        self._root = root.rstrip("/")

    def pull(self, name: str, entries: pathlib.Path) -> bool:
        """Copy entry ``name`` into ``entries`` (whole, or not at all); whether it is there now."""
        remote = f"{self._root}/{name}"
        temporary = entries / f".pulling-{uuid.uuid4().hex}"
        try:
            if not self._fs.exists(f"{remote}/{MANIFEST}"):
                return False
            started = time.perf_counter()
            for path in self._fs.find(remote):
                target = temporary / path[len(remote):].lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                self._fs.get_file(path, str(target))
            try:
                os.rename(temporary, entries / name)
            except OSError:
                if not (entries / name).is_dir():
                    raise
            logger.info("Fetched weight cache entry %s from %s in %.1f s", name, self.url, time.perf_counter() - started)
            return True
        except OSError as error:
            logger.warning("Could not fetch weight cache entry %s from %s: %s; quantizing here", name, self.url, error)
            return False
        finally:
            shutil.rmtree(temporary, ignore_errors=True)

    def push(self, folder: pathlib.Path) -> None:
        """Upload a local entry, its manifest last; an entry the store already has is left alone."""
        remote = f"{self._root}/{folder.name}"
        try:
            if self._fs.exists(f"{remote}/{MANIFEST}"):
                return
            files = sorted(path for path in folder.rglob("*") if path.is_file() and path.name != MANIFEST)
            for path in [*files, folder / MANIFEST]:
                self._fs.put_file(str(path), f"{remote}/{path.relative_to(folder).as_posix()}")
            logger.info("Shared weight cache entry %s at %s", folder.name, self.url)
        except OSError as error:
            logger.warning("Could not share weight cache entry %s at %s: %s", folder.name, self.url, error)


def load_through_cache(
    model_path: str, strategy: LoadStrategy, cache: WeightCache
) -> tuple[transformers.PreTrainedModel, str]:
    """The model, from the cache when it holds ``model_path`` loaded with ``strategy``; else loaded from the
    checkpoint and stored. Also where it came from, for the replica's description and logs."""
    kwargs = strategy.from_pretrained_kwargs()
    key = cache.key(model_path, strategy)
    hit = cache.lookup(key)
    if hit is not None:
        loaded = _load_entry(hit, kwargs, cache)
        if loaded is not None:
            return loaded
    model = transformers.AutoModelForImageTextToText.from_pretrained(model_path, **kwargs)
    try:
        cache.store(key, model)
    except OSError as error:  # a full or read-only disk must not fail a load that worked
        logger.warning("Could not store the quantized model in the weight cache at %s: %s", cache.root, error)
    return model, "checkpoint"


def _load_entry(
    hit: CacheHit, kwargs: dict[str, Any], cache: WeightCache
) -> tuple[transformers.PreTrainedModel, str] | None:
    """The entry's model once its files' SHA-256 (hashed while it loads) match; ``None`` when they do not or it fails."""
    # Pre-quantized: the quantization config comes from the entry's config.json.
    cached_kwargs = {name: value for name, value in kwargs.items() if name != "quantization_config"}
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="weight-cache-sha256") as pool:
        digests = pool.submit(_digest_problem, hit.folder, hit.files)
        try:
            model = transformers.AutoModelForImageTextToText.from_pretrained(hit.folder, **cached_kwargs)
        except Exception as error:  # noqa: BLE001 - any broken entry: the checkpoint is still there
            if is_out_of_memory(error):
                raise
            digests.cancel()
            cache.reject(hit.folder, f"loading it failed: {error}")
            return None
        problem = digests.result()
    if problem is not None:
        del model  # never handed out
        cache.reject(hit.folder, problem)
        return None
    return model, f"weight cache ({hit.folder.name}, loaded and checked in {time.perf_counter() - started:.2f} s)"


def _digest_problem(folder: pathlib.Path, files: dict[str, dict[str, Any]]) -> str | None:
    for name, expected in files.items():
        if file_sha256(folder / name) != expected["sha256"]:
            return f"{name} does not match its SHA-256"
    return None


def _check_entry(folder: pathlib.Path, key: dict[str, Any]) -> str | None:
    """Why the entry at ``folder`` must not be loaded, or ``None`` when its manifest is ``key``'s and its files
    have the sizes it records (their SHA-256 is checked while it loads: :func:`_load_entry`)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as error:
        return f"no readable manifest: {error}"
    if manifest.get("key") != key:
        return "its manifest is for another checkpoint, strategy or library versions"
    for name, expected in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {expected['bytes']}"
    return None


def _write_atomically(path: pathlib.Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    temporary.write_text(text)
    os.replace(temporary, path)
