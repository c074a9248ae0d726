"""Jobs kept durable in the file store, beside the files they analyse.

The file store (:mod:`deployments.files.store`) is already the one place every ingress replica and the job
runner see, on any node, and on S3 it outlives the cluster: a job kept there survives the ingress that took it
and the runner that ran it. Layout under the store's root::

    <owner>/jobs/<job id>/job.json              the record (:class:`JobRecord`); the runner writes it
    <owner>/jobs/<job id>/cancel                present once DELETE was asked
    <owner>/jobs/<job id>/segments/00042.json   segment 42's result, written once

A segment's result is created only where none is (:meth:`JobStore.put_segment`: ``O_EXCL`` on a local
folder; elsewhere an existence check, which is exact because one runner writes a job's segments), so each
segment is recorded exactly once however often it ran. Records are written whole (a local write goes to a
temporary name first and is renamed), so a reader never sees half of one.
"""

import json
import logging
import os
import time
from typing import Any, Iterable

from deployments.files.store import FileStore
from deployments.jobs.records import JobRecord, JobState, looks_like_job_id

logger = logging.getLogger(__name__)

_SEGMENT_DIGITS = 5


class JobStore:
    def __init__(self, files: FileStore) -> None:
        self._fs = files.fs
        self._root = files.root
        self._local = files.is_local
        self.url = files.url

    # -- paths ------------------------------------------------------------------------------------

    def _folder(self, owner: str, job_id: str) -> str:
        return f"{self._root}/{owner}/jobs/{job_id}"

    def _segment_path(self, job: JobRecord, index: int) -> str:
        return f"{self._folder(job.owner, job.id)}/segments/{index:0{_SEGMENT_DIGITS}d}.json"

    # -- the record -------------------------------------------------------------------------------

    def create(self, job: JobRecord) -> None:
        if self._local:
            os.makedirs(f"{self._folder(job.owner, job.id)}/segments", mode=0o700, exist_ok=True)
        self.save(job)

    def save(self, job: JobRecord) -> None:
        self._write(f"{self._folder(job.owner, job.id)}/job.json", job.to_json())

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
        """The caller's live jobs, newest first."""
        now = time.time()
        jobs = [job for job in self._all(f"{self._root}/{owner}/jobs/job-*/job.json") if job.expires_at is None or job.expires_at > now]
        return sorted(jobs, key=lambda job: (job.created_at, job.id), reverse=True)

    def unfinished(self) -> list[JobRecord]:
        """Every owner's jobs that have not ended: what a runner adopts."""
        return [job for job in self._all(f"{self._root}/*/jobs/job-*/job.json") if not job.is_final]

    def remove(self, job: JobRecord) -> None:
        try:
            self._fs.rm(self._folder(job.owner, job.id), recursive=True)
        except FileNotFoundError:
            pass

    def sweep(self) -> int:
        """Delete every ended job past its time to live; how many went."""
        now = time.time()
        swept = 0
        for job in self._all(f"{self._root}/*/jobs/job-*/job.json"):
            if job.expires_at is not None and job.expires_at <= now:
                self.remove(job)
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

    def put_segment(self, job: JobRecord, result: dict[str, Any]) -> bool:
        """Record one segment's result unless it is recorded already; whether this call recorded it."""
        path = self._segment_path(job, result["index"])
        data = json.dumps(result).encode()
        if self._local:
            try:
                descriptor = os.open(f"{path}.partial", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(descriptor, "wb") as file:
                    file.write(data)
                os.link(f"{path}.partial", path)  # fails when the result exists: the first one stays
                return True
            except FileExistsError:
                return False
            finally:
                try:
                    os.unlink(f"{path}.partial")
                except FileNotFoundError:
                    pass
        if self._fs.exists(path):
            return False
        self._fs.pipe_file(path, data)
        return True

    def recorded_indices(self, job: JobRecord) -> set[int]:
        return {int(path.rsplit("/", 1)[-1].removesuffix(".json")) for path in self._segment_paths(job)}

    def segments(self, job: JobRecord, indices: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """The recorded results (those of ``indices`` only, when given), by index."""
        if indices is None:
            paths = sorted(self._segment_paths(job))
        else:
            paths = [self._segment_path(job, index) for index in sorted(indices)]
        results = []
        for path in paths:
            try:
                results.append(json.loads(self._fs.cat_file(path)))
            except FileNotFoundError:  # swept meanwhile
                continue
        return results

    def _segment_paths(self, job: JobRecord) -> list[str]:
        pattern = f"{self._folder(job.owner, job.id)}/segments/" + "[0-9]" * _SEGMENT_DIGITS + ".json"
        return self._fs.glob(pattern)

    # -- reading and writing whole ----------------------------------------------------------------

    def _write(self, path: str, data: dict[str, Any]) -> None:
        encoded = json.dumps(data).encode()
        if not self._local:
            self._fs.pipe_file(path, encoded)  # an object store's put is whole or nothing
            return
        partial = f"{path}.{os.getpid()}.partial"
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(encoded)
        os.replace(partial, path)

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
