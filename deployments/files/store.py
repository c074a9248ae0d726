"""Uploaded files (OpenAI's Files API) in any fsspec store: a local folder, ``s3://``, ``gs://``.

Every ingress replica, on any node, opens the same store, so each sees every file. Layout under the
store's root::

    <owner>/<file id>        the bytes
    <owner>/<file id>.json   the record (:class:`FileRecord`)

``owner`` is the first 16 hex digits of the SHA-256 of the API key that uploaded the file
(``anonymous`` with keys off). A file is looked up under its caller's owner only, so another key's
file is not found (404), never forbidden (403), and ids cannot be probed. A file past its time to
live is not found, and is swept (both objects deleted) by whichever ingress sweeps first, unless an unfinished
job analyses it; one being read meanwhile is simply not found.

Paths are built from the caller's owner and a checked file id, never from a record's own fields: a
record whose id or owner differs from where it lies (edited, or planted) counts as no file, as does one
that does not parse, and the sweep goes on past it. A local store's folders are created 0700, and a
root folder another user owns is refused at start (a local user who made it first would read every upload).
"""

import dataclasses
import hashlib
import json
import logging
import os
import secrets
import time
from typing import Any, BinaryIO, Literal

import fsspec

from models.checkpoint_source import is_remote_source

logger = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
FileKind = Literal["video", "image", "other"]


_READ_BLOCK_BYTES = 4 * 2**20


def owner_of(api_key: str | None) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()[:16] if api_key else ANONYMOUS


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


@dataclasses.dataclass(frozen=True)
class FileRecord:
    id: str
    owner: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    expires_at: int | None
    sha256: str
    kind: FileKind
    content_type: str

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's ``file`` object, with this server's ``kind`` and ``sha256`` beside it."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "kind": self.kind,
            "sha256": self.sha256,
        }


class FileStore:
    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        options = dict(storage_options or {})
        if is_remote_source(url):
            # No listings cache: another process (an ingress replica, the job runner) adds files and jobs, and a
            # cached listing of their folder makes s3fs answer "not found" for them without asking the store.
            options.setdefault("use_listings_cache", False)
        self._fs, root = fsspec.core.url_to_fs(url, **options)
        self._root = root.rstrip("/")
        self.url = url
        self.is_local = "file" in (self._fs.protocol if isinstance(self._fs.protocol, tuple) else (self._fs.protocol,))
        if self.is_local:
            _private_folder(self._root)

    @property
    def fs(self) -> Any:
        """The fsspec filesystem (the job store keeps its records in the same place)."""
        return self._fs

    @property
    def root(self) -> str:
        return self._root

    def _path(self, owner: str, file_id: str, suffix: str = "") -> str:
        return f"{self._root}/{owner}/{file_id}{suffix}"

    def put(
        self,
        local_path: str,
        *,
        owner: str,
        filename: str,
        purpose: str,
        kind: FileKind,
        sha256: str,
        size_bytes: int,
        content_type: str,
        ttl_s: float,
    ) -> FileRecord:
        """Copy a received upload into the store, then write its record (a file without a record is never listed)."""
        now = int(time.time())
        record = FileRecord(
            id=new_file_id(),
            owner=owner,
            filename=filename,
            purpose=purpose,
            bytes=size_bytes,
            created_at=now,
            expires_at=now + int(ttl_s) if ttl_s else None,
            sha256=sha256,
            kind=kind,
            content_type=content_type,
        )
        if self.is_local:
            _private_folder(f"{self._root}/{owner}")  # a folder on disk; nothing on object stores
        self._fs.put_file(local_path, self._path(owner, record.id))
        self._fs.pipe_file(self._path(owner, record.id, ".json"), json.dumps(dataclasses.asdict(record)).encode())
        return record

    def get(self, owner: str, file_id: str, *, include_expired: bool = False) -> FileRecord | None:
        """The caller's file; one past its time to live is not found (the sweep deletes it, unless an unfinished
        job uses it: ``include_expired`` is the job runner's read of such a file)."""
        if not _looks_like_id(file_id):
            return None
        record = self._load(self._path(owner, file_id, ".json"), owner, file_id)
        if record is None:
            return None
        if not include_expired and record.expires_at is not None and record.expires_at <= time.time():
            return None
        return record

    def list(self, owner: str) -> list[FileRecord]:
        """The caller's live files, newest first."""
        records = []
        for path in self._fs.glob(f"{self._root}/{owner}/file-*.json"):
            record = self._load(path, owner, _id_of(path))
            if record is not None:
                records.append(record)
        now = time.time()
        live = [record for record in records if record.expires_at is None or record.expires_at > now]
        return sorted(live, key=lambda record: (record.created_at, record.id), reverse=True)

    def delete(self, owner: str, file_id: str) -> bool:
        record = self.get(owner, file_id)
        if record is None:
            return False
        self._remove(record)
        return True

    def open(self, record: FileRecord) -> BinaryIO:
        """The bytes as a seekable file; on an object store each read fetches a range of ``_READ_BLOCK_BYTES``
        (s3fs's default block, 50 MiB, would fetch most of a video to read its header)."""
        return self._fs.open(self._path(record.owner, record.id), "rb", block_size=_READ_BLOCK_BYTES)

    def local_path(self, record: FileRecord) -> str | None:
        """Where the bytes are on this machine's disk, for a local store (decoders read it in place)."""
        return self._path(record.owner, record.id) if self.is_local else None

    def read(self, record: FileRecord) -> bytes:
        return self._fs.cat_file(self._path(record.owner, record.id))

    def sweep(self, in_use: frozenset[tuple[str, str]] = frozenset()) -> int:
        """Delete every file past its time to live, whoever owns it, but those ``in_use`` (owner, file id) by an
        unfinished job; how many went."""
        now = time.time()
        swept = 0
        for path in self._fs.glob(f"{self._root}/*/file-*.json"):
            record = self._load(path, path.rsplit("/", 2)[-2], _id_of(path))
            if record is None or (record.owner, record.id) in in_use:
                continue
            if record.expires_at is not None and record.expires_at <= now:
                self._remove(record)
                swept += 1
        if swept:
            logger.info("Swept %d expired files from %s", swept, self.url)
        return swept

    def _load(self, path: str, owner: str, file_id: str) -> FileRecord | None:
        """The record at ``path`` when it is one and names the place it lies in (``owner``, ``file_id``); else
        ``None``, with a warning for a damaged or foreign one (deleted meanwhile is no news)."""
        try:
            record = FileRecord(**json.loads(self._fs.cat_file(path)))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as error:  # not JSON, or not a record's fields
            logger.warning("Skipping the file record %r: it does not parse (%s)", path, error)
            return None
        if record.id != file_id or record.owner != owner or not _looks_like_id(record.id):
            logger.warning("Skipping the file record %r: it names id %r of owner %r", path, record.id, record.owner)
            return None
        return record

    def _remove(self, record: FileRecord) -> None:
        for suffix in (".json", ""):  # the record first: a file without one is never served
            try:
                self._fs.rm_file(self._path(record.owner, record.id, suffix))
            except FileNotFoundError:
                pass


def _id_of(record_path: str) -> str:
    return record_path.rsplit("/", 1)[-1].removesuffix(".json")


def _private_folder(path: str) -> None:
    """Create ``path`` readable by this user alone; refuse one another user owns, and narrow one of ours."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    status = os.stat(path)
    if status.st_uid != os.getuid():
        raise PermissionError(
            f"The file store folder {path} belongs to uid {status.st_uid}, not to this server's uid {os.getuid()}: "
            "another user could read every upload. Set files.store_url to a folder this user owns"
        )
    if status.st_mode & 0o077:
        os.chmod(path, 0o700)


def _looks_like_id(file_id: str) -> bool:
    """Ids are ``file-`` and 24 hex digits: anything else (``../x``, ``a/b``) never reaches the store's paths."""
    suffix = file_id.removeprefix("file-")
    return file_id.startswith("file-") and len(suffix) == 24 and all(c in "0123456789abcdef" for c in suffix)
