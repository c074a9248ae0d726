"""OpenAI's Files API, and the files in requests: upload once, ask many.

``POST /v1/files`` streams a multipart upload to a temporary file under the same counting limits as
``/v1/analyze`` (``limits.max_upload_bytes``), checks the caller's quotas, sniffs what it is (a video
container served here, a PNG/JPEG/WebP image, or other), hashes it and copies it to the store
(:mod:`deployments.files.store`). A chat part ``{"type": "file", "file": {"file_id": ...}}``, a
``video_url`` or ``image_url`` whose url is a file id, and ``/v1/analyze``'s ``file_id`` field all
resolve through :class:`FilesService`, which answers a video's frames from the decoded-frame cache
(:mod:`deployments.files.frame_cache`) when it can.
"""

import asyncio
import collections
import contextlib
import hashlib
import logging
import pathlib
import tempfile
import threading
from typing import Any, AsyncIterator, BinaryIO, Callable, Iterator

from starlette.requests import Request

from deployments.config.app_config import AppConfig
from deployments.errors import ApiError
from deployments.files.frame_cache import FrameCache, FrameCacheKey
from deployments.files.store import FileKind, FileRecord, FileStore
from deployments.files.uploads import receive_upload
from models.checkpoint_source import is_remote_source
from models.media import inputs as media
from models.media.decode_budget import DecodeBudget
from models.media.video import FrameSelection, SampledVideo, VideoInfo, VideoLimits, probe_video, sample_video, served_demuxer

logger = logging.getLogger(__name__)

FILE_FIELD = "file"
FILE_ID_PREFIX = "file-"  # a video_url or image_url that starts so names an uploaded file
PURPOSES = ("vision", "user_data", "assistants")
_HASH_CHUNK_BYTES = 4 * 1024 * 1024
_CONTENT_CHUNK_BYTES = 1024 * 1024
_IMAGE_HEAD_BYTES = 1024 * 1024  # Pillow reads the header from the first bytes


class FilesService:
    """The store, the quotas and the frame cache of one ingress replica."""

    def __init__(
        self,
        config: AppConfig,
        on_cache_lookup: Callable[[bool], None] = lambda hit: None,
        held_by_jobs: Callable[[str], int] = lambda owner: 0,
    ) -> None:
        settings = config.files
        self._on_cache_lookup = on_cache_lookup  # the metrics' hit and miss counter
        self._held_by_jobs = held_by_jobs  # an owner's jobs' result bytes: they count against files.max_bytes_per_key
        self._owner_locks: collections.defaultdict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self.store = open_store(config)
        url = self.store.url
        self.frames = FrameCache(settings.frame_cache_bytes)
        self._config = config
        logger.info("Files stored at %s (time to live %g s); frame cache %d bytes", url, settings.ttl_s,
                    settings.frame_cache_bytes)

    # -- the routes ----------------------------------------------------------------------------

    async def upload(self, request: Request, owner: str) -> dict[str, Any]:
        limits, settings = self._config.limits, self._config.files
        async with receive_upload(
            request,
            file_field=FILE_FIELD,
            text_fields=frozenset({"purpose"}),
            max_file_bytes=limits.max_upload_bytes,
            max_field_bytes=256,
            directory=self._config.ingress.upload_dir,
        ) as upload:
            purpose = upload.fields.get("purpose")
            if purpose not in PURPOSES:
                raise ApiError(
                    400, f"purpose: {purpose!r}; send one of {', '.join(PURPOSES)} (curl -F purpose=vision)",
                    param="purpose",
                )
            sha256, kind, content_type = await asyncio.to_thread(_hash_and_sniff, upload.path)
            record = await asyncio.to_thread(
                self._put_within_quotas,
                str(upload.path),
                owner=owner,
                filename=upload.filename or "upload",
                purpose=purpose,
                kind=kind,
                sha256=sha256,
                size_bytes=upload.size_bytes,
                content_type=content_type,  # what the bytes are, not what the client said they are
                ttl_s=settings.ttl_s,
            )
        logger.info("Stored %s (%r, %d bytes, %s) for owner %s", record.id, record.filename, record.bytes, kind, owner)
        return record.to_openai()

    def _put_within_quotas(self, local_path: str, *, owner: str, size_bytes: int, **fields: Any) -> FileRecord:
        """Store the upload, then count the key's files with it (``files.max_files_per_key``, ``max_bytes_per_key``
        with its jobs' results): over a quota it is deleted again. Counted after the store, two uploads racing on
        two ingress replicas each see the other, so both may be refused but never both kept past a quota; this
        replica's uploads for a key are counted one at a time. A key plainly over its quota is refused before
        anything is stored."""
        with self._owner_locks[owner]:
            jobs_bytes = self._held_by_jobs(owner)  # read once: the count after the store does not change it
            self._check_quotas(self.store.list(owner), jobs_bytes, size_bytes)
            record = self.store.put(local_path, owner=owner, size_bytes=size_bytes, **fields)
            try:
                self._check_quotas([held for held in self.store.list(owner) if held.id != record.id], jobs_bytes, size_bytes)
            except ApiError:
                self.store.delete(owner, record.id)
                raise
        return record

    def _check_quotas(self, others: list[FileRecord], jobs_bytes: int, size_bytes: int) -> None:
        settings = self._config.files
        if len(others) + 1 > settings.max_files_per_key:
            raise ApiError(
                429, f"This key holds {len(others)} files; the limit is {settings.max_files_per_key} "
                "(files.max_files_per_key). Delete some (DELETE /v1/files/{id}) first",
                code="file_quota_exceeded",
            )
        held_bytes = sum(held.bytes for held in others) + jobs_bytes
        if held_bytes + size_bytes > settings.max_bytes_per_key:
            raise ApiError(
                413, f"This key holds {held_bytes} bytes of files and job results; with this one ({size_bytes} bytes) "
                f"that is over the {settings.max_bytes_per_key}-byte limit (files.max_bytes_per_key)",
                code="file_quota_exceeded",
            )

    async def list(self, owner: str, *, purpose: str | None, limit: int, order: str, after: str | None) -> dict[str, Any]:
        records = await asyncio.to_thread(self.store.list, owner)
        if purpose is not None:
            records = [record for record in records if record.purpose == purpose]
        if order == "asc":
            records.reverse()
        if after is not None:
            ids = [record.id for record in records]
            records = records[ids.index(after) + 1 :] if after in ids else []
        page = records[:limit]
        return {
            "object": "list",
            "data": [record.to_openai() for record in page],
            "has_more": len(records) > limit,
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
        }

    async def content(self, owner: str, file_id: str) -> tuple[FileRecord, AsyncIterator[bytes]]:
        """The file's record, and its bytes read from the store a chunk at a time (off the event loop)."""
        record = await asyncio.to_thread(self.record, owner, file_id, "file_id")
        try:
            reader = await asyncio.to_thread(self.store.open, record)
        except FileNotFoundError:  # expired and swept since its record was read
            raise _not_found(file_id, "file_id") from None

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while chunk := await asyncio.to_thread(reader.read, _CONTENT_CHUNK_BYTES):
                    yield chunk
            finally:
                reader.close()

        return record, chunks()

    async def delete(self, owner: str, file_id: str) -> dict[str, Any]:
        if not await asyncio.to_thread(self.store.delete, owner, file_id):
            raise _not_found(file_id, "file_id")
        return {"id": file_id, "object": "file", "deleted": True}

    async def sweep_forever(self, in_use: Callable[[], frozenset[tuple[str, str]]] = frozenset) -> None:
        """Delete expired files every ``files.sweep_period_s`` (each ingress; the first to see one deletes it), but
        those ``in_use()`` names (owner, file id): an unfinished job's file stays until the job ends."""
        while True:
            await asyncio.sleep(self._config.files.sweep_period_s)
            try:
                await asyncio.to_thread(lambda: self.store.sweep(in_use()))
            except Exception as error:  # noqa: BLE001 - a store hiccup must not end the sweeping
                logger.warning("Sweeping expired files failed: %s", error)

    # -- files in requests (called in worker threads) --------------------------------------------

    def record(self, owner: str, file_id: str, param: str) -> FileRecord:
        record = self.store.get(owner, file_id)
        if record is None:
            raise _not_found(file_id, param)
        return record

    def video_record(self, owner: str, file_id: str, param: str) -> FileRecord:
        return self._record_of_kind(owner, file_id, param, "video")

    def _record_of_kind(self, owner: str, file_id: str, param: str, kind: FileKind) -> FileRecord:
        """The caller's file, which must be a video or an image: a 400 naming what it is otherwise."""
        return _of_kind(self.record(owner, file_id, param), param, kind)

    def cached_frames(self, record: FileRecord, selection: FrameSelection, limits: VideoLimits) -> SampledVideo | None:
        sampled = self.frames.get(_cache_key(record, selection, limits))
        self._on_cache_lookup(sampled is not None)
        return sampled

    def probe(self, record: FileRecord, limits: VideoLimits) -> VideoInfo:
        with _gone_is_not_found(record), opened_video(self.store, record) as source:
            return probe_video(source, limits)

    def sample(
        self, record: FileRecord, selection: FrameSelection, limits: VideoLimits, budget: DecodeBudget
    ) -> SampledVideo:
        """The frames, decoded from the store (a cache miss), then kept for the next question; frames the
        decode budget made the sampler substitute are not kept (another request may afford the exact ones)."""
        with _gone_is_not_found(record):  # a 404, as if never found
            sampled = sample_from_store(self.store, record, selection, limits, budget)
        if sampled.substituted == 0:
            self.frames.put(_cache_key(record, selection, limits), sampled)
        return sampled

    def image_bytes(self, record: FileRecord, param: str, max_bytes: int) -> bytes:
        """An uploaded image's bytes (``record`` as :meth:`record` read it), refused unread (413) when the file is
        larger than an image may be, and a 400 when it is not an image."""
        _of_kind(record, param, "image")
        if record.bytes > max_bytes:
            raise ApiError(413, f"{param}: {record.id} is {record.bytes} bytes; an image may be {max_bytes} bytes "
                           "(limits.max_image_bytes)", param=param, code="media_too_large")
        with _gone_is_not_found(record, param):
            return self.store.read(record)

def open_store(config: AppConfig) -> FileStore:
    """The store ``files.store_url`` names (a folder under the system temp dir when empty)."""
    settings = config.files
    url = settings.store_url or (pathlib.Path(tempfile.gettempdir()) / "video-detective-files").as_uri()
    return FileStore(url, settings.storage_options)


def node_local_store_problem(config: AppConfig, *, alive_nodes: int) -> str | None:
    """Why this app's file store cannot serve a cluster (``None`` when it can): with more than one node, or groups
    placed by node labels (a cluster's config), a folder store is one node's, while the files, the jobs and their
    results must be seen by every ingress, job runner and decode task, on any node."""
    url = config.files.store_url
    if is_remote_source(url):
        return None
    placed = bool(config.ingress.node_labels or config.cpu_group.node_labels or config.gpu_group.node_labels)
    if alive_nodes <= 1 and not placed:
        return None
    where = url or f"a folder under {tempfile.gettempdir()}"
    return (
        f"files.store_url is {where}, a node-local store, on a cluster ({alive_nodes} nodes alive"
        f"{', groups placed by node_labels' if placed else ''}): files, jobs and job results written on one node are "
        "not found on another, and are lost with its pod. Set files.store_url to an object store (s3://bucket/files), "
        "or to a folder every node mounts at the same path"
    )


def sample_from_store(
    store: FileStore,
    record: FileRecord,
    selection: FrameSelection,
    limits: VideoLimits,
    budget: DecodeBudget,
    fetched: list[int] | None = None,
) -> SampledVideo:
    """A stored video's frames (``FileNotFoundError`` when it went meanwhile); a window's sampler seeks straight to it.
    ``fetched`` gets the bytes read from an object store (ranges, not the whole object)."""
    with opened_video(store, record) as source:
        sampled = sample_video(source, selection, limits, budget)
        cache = getattr(source, "cache", None)
        if fetched is not None and cache is not None:
            fetched.append(int(getattr(cache, "total_requested_bytes", 0)))
        return sampled


@contextlib.contextmanager
def opened_video(store: FileStore, record: FileRecord) -> Iterator[str | BinaryIO]:
    """The file as the decoder reads it: its local path, or the store's object opened for ranged reads
    (an S3 object is never read whole to sample a few frames)."""
    local = store.local_path(record)
    if local is not None:
        yield local
        return
    with store.open(record) as file:
        yield file


@contextlib.contextmanager
def _gone_is_not_found(record: FileRecord, param: str = "file_id") -> Iterator[None]:
    """A file swept (expired or deleted) between its record's read and its bytes' is a 404, as if never found."""
    try:
        yield
    except FileNotFoundError:
        raise _not_found(record.id, param) from None


def _cache_key(record: FileRecord, selection: FrameSelection, limits: VideoLimits) -> FrameCacheKey:
    return FrameCacheKey.of(record.owner, record.sha256, selection, limits)


def _hash_and_sniff(path: pathlib.Path) -> tuple[str, FileKind, str]:
    """The SHA-256, the kind and the content type the bytes show (never the client's word for them)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        head = file.read(_IMAGE_HEAD_BYTES)
        digest.update(head)
        while chunk := file.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest(), *_sniff(head)


_VIDEO_CONTENT_TYPES = {"mov": "video/mp4", "matroska": "video/x-matroska", "avi": "video/x-msvideo"}
_IMAGE_CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
OTHER_CONTENT_TYPE = "application/octet-stream"


def _sniff(head: bytes) -> tuple[FileKind, str]:
    try:
        return "video", _VIDEO_CONTENT_TYPES[served_demuxer(head[:12])]
    except media.MediaError:
        pass
    try:
        return "image", _IMAGE_CONTENT_TYPES.get(media.open_image(head).format or "", OTHER_CONTENT_TYPE)
    except media.MediaError:
        return "other", OTHER_CONTENT_TYPE


def download_content_type(record: FileRecord) -> str:
    """The type a download is served as: the sniffed one for a video or an image; bytes for anything else
    (a file uploaded as ``text/html`` is never served as a page)."""
    expected = {"video": "video/", "image": "image/"}.get(record.kind)
    if expected and record.content_type.startswith(expected):
        return record.content_type
    return OTHER_CONTENT_TYPE


def _of_kind(record: FileRecord, param: str, kind: FileKind) -> FileRecord:
    if record.kind != kind:
        raise ApiError(
            400, f"{param}: {record.id} ({record.filename}) is {_kind_words(record.kind)}, not {_kind_words(kind)}",
            param=param, code=f"not_{_kind_words(kind).replace(' ', '_')}",
        )
    return record


def _kind_words(kind: FileKind) -> str:
    return {"video": "a video", "image": "an image", "other": "neither a video nor an image"}[kind]


def _not_found(file_id: str, param: str) -> ApiError:
    return ApiError(
        404, f"{param}: no file {file_id!r} here for this key (unknown, deleted, expired, or another key's)",
        error_type="not_found_error", param=param, code="file_not_found",
    )
