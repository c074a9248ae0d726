"""Streamed ``multipart/form-data`` uploads: the file goes to a temporary file, its size checked as it arrives.

The body is parsed as it streams in (python-multipart's push parser), never held in memory whole:
the one file part is written to a temporary file, the text fields (small) are kept. The upload is
refused with 413 the moment it passes ``max_upload_bytes`` (or at once from ``Content-Length``),
and the temporary file is deleted whatever happens: use :func:`receive_upload` as a context manager.
"""

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import pathlib
import re
import tempfile
import time
from typing import AsyncIterator

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from deployments.errors import ApiError
from memory.cleanup import return_freed_heap

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Upload:
    path: pathlib.Path | None  # None: the body had no file part (allowed with file_required=False)
    filename: str
    content_type: str
    size_bytes: int
    fields: dict[str, str]
    receive_seconds: float = 0.0
    sha256: str = ""  # of the file's bytes, hashed as they arrived: the media identity's content hash


@dataclasses.dataclass
class _Part:
    name: str | None = None
    filename: str | None = None
    content_type: str = ""
    header_field: bytes = b""
    header_value: bytes = b""
    data: bytearray = dataclasses.field(default_factory=bytearray)


class _UploadCollector:
    """python-multipart callbacks: one file part to disk, text fields to memory, limits on both."""

    def __init__(
        self,
        *,
        file_field: str,
        text_fields: frozenset[str],
        max_file_bytes: int,
        max_field_bytes: int,
        directory: str | None,
    ) -> None:
        self._file_field = file_field
        self._text_fields = text_fields
        self._max_file_bytes = max_file_bytes
        self._max_field_bytes = max_field_bytes
        self._directory = directory
        self.fields: dict[str, str] = {}
        self.files: list[tuple[str, str, str]] = []  # (field, filename, content type)
        self.file_bytes = 0
        self.file = None
        self.path: pathlib.Path | None = None
        self.digest = hashlib.sha256()
        self._part = _Part()
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": lambda data, start, end: self._append("header_field", data[start:end]),
            "on_header_value": lambda data, start, end: self._append("header_value", data[start:end]),
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
        }

    def _append(self, attribute: str, data: bytes) -> None:
        setattr(self._part, attribute, getattr(self._part, attribute) + data)
        if len(getattr(self._part, attribute)) > 8192:
            raise ApiError(400, "A multipart header is over 8192 bytes")

    def _on_part_begin(self) -> None:
        self._part = _Part()
        self._headers = {}

    def _on_header_end(self) -> None:
        self._headers[self._part.header_field.strip().lower()] = self._part.header_value.strip()
        self._part.header_field, self._part.header_value = b"", b""

    def _on_headers_finished(self) -> None:
        raw_disposition = self._headers.get(b"content-disposition", b"")
        disposition, options = parse_options_header(raw_disposition)
        if disposition != b"form-data" or b"name" not in options:
            raise ApiError(400, "Each multipart part needs 'Content-Disposition: form-data; name=...'")
        part = self._part
        part.name = options[b"name"].decode("utf-8", "replace")
        part.content_type = self._headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        if b"filename" in options:
            # The raw value: python-multipart drops everything up to a backslash (old IE sent full paths).
            raw = _RAW_FILENAME.search(raw_disposition)
            part.filename = (raw.group(1) or raw.group(2) if raw else options[b"filename"]).decode("utf-8", "replace")
            self._begin_file(part)
        elif part.name not in self._text_fields and part.name != self._file_field:
            raise ApiError(
                400,
                f"Unknown form field {part.name!r}; the fields are {self._file_field!r} (the file) and "
                f"{', '.join(sorted(self._text_fields))}",
                param=part.name,
            )

    def _begin_file(self, part: _Part) -> None:
        if part.name != self._file_field:
            raise ApiError(
                400, f"A file came in field {part.name!r}; send the video in the field {self._file_field!r}", param=part.name
            )
        if self.files:
            raise ApiError(
                400,
                f"More than one file was sent; send exactly one video in the field {self._file_field!r}",
                param=self._file_field,
            )
        _check_filename(part.filename or "")
        self.files.append((part.name, part.filename or "", part.content_type))
        handle, name = tempfile.mkstemp(prefix=_UPLOAD_PREFIX, suffix=".video", dir=self._directory)
        self.path = pathlib.Path(name)
        self.file = os.fdopen(handle, "wb")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part.filename is not None:
            self.file_bytes += end - start
            if self.file_bytes > self._max_file_bytes:
                raise ApiError(
                    413,
                    f"The upload is over the {self._max_file_bytes}-byte limit (limits.max_upload_bytes)",
                    code="upload_too_large",
                )
            self.file.write(data[start:end])
            self.digest.update(data[start:end])
        else:
            part.data += data[start:end]
            if len(part.data) > self._max_field_bytes:
                raise ApiError(
                    413, f"The form field {part.name!r} is over the {self._max_field_bytes}-byte limit", param=part.name
                )

    def _on_part_end(self) -> None:
        part = self._part
        if part.filename is not None:
            self.file.close()
            return
        if part.name in self.fields:
            raise ApiError(400, f"The form field {part.name!r} was sent twice", param=part.name)
        try:
            self.fields[part.name] = part.data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ApiError(400, f"The form field {part.name!r} is not UTF-8 text", param=part.name) from error

    def discard(self) -> None:
        if self.file is not None and not self.file.closed:
            self.file.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_RAW_FILENAME = re.compile(rb'filename="((?:[^"\\]|\\.)*)"|filename=([^;\s]*)', re.IGNORECASE)


_UPLOAD_PREFIX = "vd-upload-"
# After an upload this large, freed heap pages go back to the OS (a few ms).
_TRIM_AFTER_UPLOAD_BYTES = 16 * 1024 * 1024


def remove_stale_uploads(directory: str | None, *, older_than_s: float) -> int:
    """Delete upload files left by an ingress that died mid-request; returns how many went.

    Only files this module names (``vd-upload-*``) and only older than ``older_than_s``, so uploads in
    flight at another ingress replica sharing the folder are left alone.
    """
    folder = pathlib.Path(directory or tempfile.gettempdir())
    cutoff = time.time() - older_than_s
    removed = 0
    for path in folder.glob(f"{_UPLOAD_PREFIX}*.video"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    if removed:
        logger.warning("Removed %d stale upload files from %s (older than %.0f s)", removed, folder, older_than_s)
    return removed


def _check_filename(filename: str) -> None:
    if not filename:
        return
    if "/" in filename or "\\" in filename or filename in {".", ".."}:
        raise ApiError(
            400,
            f"The filename {filename[:100]!r} has path separators; send a bare file name "
            "(the server never uses it as a path)",
            param="filename",
        )
    if _CONTROL_CHARACTERS.search(filename):
        raise ApiError(
            400,
            f"The filename {filename[:100]!r} has control characters (a newline, an escape, ...); send a plain name",
            param="filename",
        )


@contextlib.asynccontextmanager
async def receive_upload(
    request: Request,
    *,
    file_field: str,
    text_fields: frozenset[str],
    max_file_bytes: int,
    max_field_bytes: int,
    directory: str | None = None,
    file_required: bool = True,
) -> AsyncIterator[Upload]:
    """Parse the streamed body; yield the :class:`Upload`; delete the temporary file on the way out.

    With ``file_required=False`` a body of text fields only is an upload with ``path=None``."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise ApiError(
            415,
            f"Content-Type {request.headers.get('content-type', '(none)')!r} is not accepted here; send "
            "multipart/form-data (curl -F video=@clip.mp4 -F question=...)",
            code="unsupported_content_type",
        )
    # Whole body: the file plus the fields and the multipart framing.
    max_body_bytes = max_file_bytes + max_field_bytes * (len(text_fields) + 1) + 64 * 1024
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise ApiError(
            413, f"The upload is {int(declared)} bytes; the limit is {max_file_bytes} bytes (limits.max_upload_bytes)",
            code="upload_too_large",
        )
    collector = _UploadCollector(
        file_field=file_field,
        text_fields=text_fields,
        max_file_bytes=max_file_bytes,
        max_field_bytes=max_field_bytes,
        directory=directory,
    )
    parser = MultipartParser(options[b"boundary"], collector.callbacks())
    try:
        try:
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
        except MultipartParseError as error:
            raise ApiError(400, f"The multipart body does not parse: {error}") from error
        except ClientDisconnect as error:
            raise ApiError(400, "The client went away before the upload finished") from error
        if collector.file is not None and not collector.file.closed:
            raise ApiError(400, "The multipart body ended inside the file part; the upload is incomplete")
        if not collector.files and not file_required:
            yield Upload(path=None, filename="", content_type="", size_bytes=0, fields=collector.fields)
            return
        if not collector.files:
            raise ApiError(
                400,
                f"No file was sent; send the video as a file in the field {file_field!r} (curl -F {file_field}=@clip.mp4)",
                param=file_field,
            )
        _, filename, part_type = collector.files[0]
        yield Upload(
            path=collector.path,
            filename=filename,
            content_type=part_type,
            size_bytes=collector.file_bytes,
            fields=collector.fields,
            sha256=collector.digest.hexdigest(),
        )
    finally:
        collector.discard()
        if collector.file_bytes >= _TRIM_AFTER_UPLOAD_BYTES:
            # The body passed through this process in Serve's message buffers; glibc keeps their pages.
            await asyncio.to_thread(return_freed_heap)
