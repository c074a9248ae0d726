"""Jobs kept durable in the file store, beside the files they analyse.

The file store (:mod:`deployments.files.store`) is already the one place every ingress replica and the job
runner see, on any node, and on S3 it outlives the cluster: a job kept there survives the ingress that took it
and the runner that ran it. Layout under the store's root::

    <owner>/jobs/<job id>/job.json                   the record (:class:`JobRecord`), its summary included
    <owner>/jobs/<job id>/cancel                     present once DELETE was asked
    <owner>/jobs/<job id>/segments/00042.json        segment 42's result, written once
    <owner>/jobs/<job id>/segments/00042.thumbnails.json   its sampled frames' thumbnails, once per frame
    _index/unfinished/<owner>.<job id>               present while the job has not ended
    _index/ended/<expires at>.<owner>.<job id>       present once it has: the sweep reads names only

The runner's scan lists ``_index/unfinished`` and reads those records only, and the sweep deletes what
``_index/ended``'s names say has expired, so neither reads an ended job's record however many there are.

A segment's result is created only where none is (:meth:`JobStore.put_segment`: ``O_EXCL`` on a local
folder; elsewhere an existence check, which is exact because one runner writes a job's segments), so each
segment is recorded exactly once however often it ran. Records are written whole (a local write goes to a
temporary name of its own, unique to the call, and is renamed), so a reader never sees half of one, and a
record in a final state is never overwritten (:meth:`JobStore.save`).
"""

import json
import logging
import os
import time
import uuid
from typing import Any, Iterable

from deployments.files.store import FileStore
from deployments.jobs.records import JobRecord, JobState, looks_like_job_id
from deployments.jobs.results import SegmentResult

logger = logging.getLogger(__name__)

_SEGMENT_DIGITS = 5
_THUMBNAILS_SUFFIX = ".thumbnails.json"


class JobStore:
    def __init__(self, files: FileStore) -> None:
        self._fs = files.fs
        self._root = files.root
        self._local = files.is_local
        self.url = files.url

    # -- paths ------------------------------------------------------------------------------------

    def _folder(self, owner: str, job_id: str) -> str:
        return f"{self._root}/{owner}/jobs/{job_id}"

    def _segment_path(self, job: JobRecord, index: int, suffix: str = ".json") -> str:
        return f"{self._folder(job.owner, job.id)}/segments/{index:0{_SEGMENT_DIGITS}d}{suffix}"

    def _unfinished_marker(self, owner: str, job_id: str) -> str:
        return f"{self._root}/_index/unfinished/{owner}.{job_id}"

    def _ended_marker(self, job: JobRecord) -> str:
        return f"{self._root}/_index/ended/{int(job.expires_at or 0):012d}.{job.owner}.{job.id}"

    # -- the record -------------------------------------------------------------------------------

    def create(self, job: JobRecord) -> None:
        if self._local:
            os.makedirs(f"{self._folder(job.owner, job.id)}/segments", mode=0o700, exist_ok=True)
        self._write(f"{self._folder(job.owner, job.id)}/job.json", job.to_json())
        self._touch(self._unfinished_marker(job.owner, job.id))

    def save(self, job: JobRecord) -> bool:
        """Write the record, unless the stored one has ended (a final state is never overwritten: a cancel that
        landed first stands); whether it was written. An ended job leaves the unfinished index for the ended one."""
        path = f"{self._folder(job.owner, job.id)}/job.json"
        stored = self._load(path, job.owner, job.id)
        if stored is not None and stored.is_final:
            logger.info("Job %s is %s already; %s is not recorded over it", job.id, stored.state.value, job.state.value)
            return False
        self._write(path, job.to_json())
        if job.is_final:
            self._touch(self._ended_marker(job))
            self._delete(self._unfinished_marker(job.owner, job.id))
        return True

    def get(self, owner: str, job_id: str) -> JobRecord | None:
        """The caller's job, or ``None`` (unknown, another key's, expired: one answer for all)."""
        if not looks_like_job_id(job_id):
            return None
        job = self._load(f"{self._folder(owner, job_id)}/job.json", owner, job_id)
        if job is not None and job.expires_at is not None and job.expires_at <= time.time():
            self.remove(job)
            return None
        return job

    def owned(self, owner: str) -> list[JobRecord]:
        """The caller's live jobs, newest first (at most ``jobs.max_jobs_per_key`` are kept)."""
        now = time.time()
        jobs = [job for job in self._all(f"{self._root}/{owner}/jobs/job-*/job.json") if job.expires_at is None or job.expires_at > now]
        return sorted(jobs, key=lambda job: (job.created_at, job.id), reverse=True)

    def unfinished(self) -> list[JobRecord]:
        """Every owner's jobs that have not ended: what a runner adopts. Only the unfinished index's records are read."""
        jobs = []
        for marker in self._fs.glob(f"{self._root}/_index/unfinished/*.job-*"):
            owner, _, job_id = marker.rsplit("/", 1)[-1].partition(".")
            job = None if not looks_like_job_id(job_id) else self._load(f"{self._folder(owner, job_id)}/job.json", owner, job_id)
            if job is None or job.is_final:  # removed meanwhile, or ended by a save whose marker delete failed
                self._delete(marker)
                continue
            jobs.append(job)
        return jobs

    def remove(self, job: JobRecord) -> None:
        """Delete the job, its results and its index entries."""
        for marker in self._fs.glob(f"{self._root}/_index/ended/*.{job.owner}.{job.id}"):
            self._delete(marker)
        self._delete(self._unfinished_marker(job.owner, job.id))
        try:
            self._fs.rm(self._folder(job.owner, job.id), recursive=True)
        except FileNotFoundError:
            pass

    def sweep(self) -> int:
        """Delete every ended job past its time to live (read from the ended index's names); how many went."""
        now = time.time()
        swept = 0
        for marker in sorted(self._fs.glob(f"{self._root}/_index/ended/*.job-*")):
            expires_at, _, name = marker.rsplit("/", 1)[-1].partition(".")
            owner, _, job_id = name.partition(".")
            if not expires_at.isdigit() or not looks_like_job_id(job_id):
                self._delete(marker)  # not one of ours
                continue
            if int(expires_at) > now:
                break  # names sort by expiry
            try:
                self._fs.rm(self._folder(owner, job_id), recursive=True)
            except FileNotFoundError:
                pass
            self._delete(marker)
            swept += 1
        if swept:
            logger.info("Swept %d expired jobs from %s", swept, self.url)
        return swept

    # -- cancellation -----------------------------------------------------------------------------

    def request_cancel(self, job: JobRecord) -> None:
        self._fs.pipe_file(f"{self._folder(job.owner, job.id)}/cancel", b"")

    def cancel_requested(self, job: JobRecord) -> bool:
        return self._fs.exists(f"{self._folder(job.owner, job.id)}/cancel")

    # -- segments ---------------------------------------------------------------------------------

    def put_segment(self, job: JobRecord, result: SegmentResult, thumbnails: list[str] | None = None) -> int | None:
        """Record one segment's result (and its frames' thumbnails) unless it is recorded already; the bytes this
        call stored, or ``None`` when a result was there first. The thumbnails go first: a recorded result's are there."""
        path = self._segment_path(job, result.index)
        data = json.dumps(result.to_json(), allow_nan=False).encode()
        pictures = json.dumps(thumbnails or []).encode()
        if self._fs.exists(path):
            return None
        self._write_bytes(self._segment_path(job, result.index, _THUMBNAILS_SUFFIX), pictures)
        if self._local:
            partial = f"{path}.{uuid.uuid4().hex}.partial"  # unique: threads and overlapping runners never share it
            try:
                descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "wb") as file:
                    file.write(data)
                os.link(partial, path)  # fails when the result exists: the first one stays
                return len(data) + len(pictures)
            except FileExistsError:
                return None
            finally:
                try:
                    os.unlink(partial)
                except FileNotFoundError:
                    pass
        self._fs.pipe_file(path, data)
        return len(data) + len(pictures)

    def stored_bytes(self, job: JobRecord) -> int:
        """What the job's recorded results and their thumbnails take in the store: one listing, nothing read."""
        try:
            entries = self._fs.ls(f"{self._folder(job.owner, job.id)}/segments", detail=True)
        except FileNotFoundError:
            return 0
        return sum(int(entry.get("size") or 0) for entry in entries if entry["name"].endswith(".json"))

    def recorded_indices(self, job: JobRecord) -> set[int]:
        return {int(path.rsplit("/", 1)[-1].removesuffix(".json")) for path in self._segment_paths(job)}

    def segments(self, job: JobRecord, indices: Iterable[int] | None = None) -> list[SegmentResult]:
        """The recorded results (those of ``indices`` only, when given), by index."""
        if indices is None:
            paths = sorted(self._segment_paths(job))
        else:
            paths = [self._segment_path(job, index) for index in sorted(indices)]
        results = []
        for path in paths:
            try:
                results.append(SegmentResult.from_json(json.loads(self._fs.cat_file(path))))
            except FileNotFoundError:  # swept meanwhile
                continue
        return results

    def segment_page(self, job: JobRecord, *, after: int, limit: int) -> tuple[list[SegmentResult], int | None]:
        """The recorded results with an index over ``after``, at most ``limit`` of them (one listing, ``limit``
        reads), and the ``after`` of the next page (``None`` when this is the last)."""
        indices = sorted(index for index in self.recorded_indices(job) if index > after)
        page = indices[:limit]
        return self.segments(job, page), (page[-1] if len(indices) > limit else None)

    def thumbnail(self, job: JobRecord, index: int, frame: int) -> str | None:
        """A recorded segment's ``frame``-th thumbnail (a JPEG data URL), or ``None``."""
        try:
            thumbnails = json.loads(self._fs.cat_file(self._segment_path(job, index, _THUMBNAILS_SUFFIX)))
        except FileNotFoundError:
            return None
        return thumbnails[frame] if 0 <= frame < len(thumbnails) else None

    def _segment_paths(self, job: JobRecord) -> list[str]:
        pattern = f"{self._folder(job.owner, job.id)}/segments/" + "[0-9]" * _SEGMENT_DIGITS + ".json"
        return self._fs.glob(pattern)

    # -- reading and writing whole ----------------------------------------------------------------

    def _write(self, path: str, data: dict[str, Any]) -> None:
        self._write_bytes(path, json.dumps(data, allow_nan=False).encode())

    def _write_bytes(self, path: str, encoded: bytes) -> None:
        if not self._local:
            self._fs.pipe_file(path, encoded)  # an object store's put is whole or nothing
            return
        partial = f"{path}.{uuid.uuid4().hex}.partial"  # unique to this call: no other writer truncates it
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(encoded)
        os.replace(partial, path)

    def _touch(self, path: str) -> None:
        if self._local:
            os.makedirs(path.rsplit("/", 1)[0], mode=0o700, exist_ok=True)
        self._fs.pipe_file(path, b"")

    def _delete(self, path: str) -> None:
        try:
            self._fs.rm_file(path)
        except FileNotFoundError:
            pass

    def _all(self, pattern: str) -> list[JobRecord]:
        jobs = []
        for path in self._fs.glob(pattern):
            owner, _, job_id = path.rsplit("/", 4)[-4:-1]
            job = self._load(path, owner, job_id)
            if job is not None:
                jobs.append(job)
        return jobs

    def _load(self, path: str, owner: str, job_id: str) -> JobRecord | None:
        try:
            job = JobRecord.from_json(json.loads(self._fs.cat_file(path)))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError) as error:
            logger.warning("Skipping the job record %r: it does not parse (%s)", path, error)
            return None
        if job.id != job_id or job.owner != owner or not looks_like_job_id(job.id):
            logger.warning("Skipping the job record %r: it names job %r of owner %r", path, job.id, job.owner)
            return None
        return job


__all__ = ["JobState", "JobStore"]
