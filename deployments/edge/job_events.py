"""``GET /v1/video/jobs/{id}/events``: a job's results as server-sent events, within bounds.

The stream sends ``progress`` first, a ``segment`` per result as it is recorded (every recorded one, from the
start, to a client that connects late: read a few at a time, never all at once), ``progress`` after them,
and ``done`` with the job's summary and final answer when it ends (the timeline is paged from ``GET``). A job
that goes meanwhile (expired) ends the stream with an ``error``.

Bounds, so that streams cannot hold the ingress (each one holds a slot of ``ingress.max_ongoing_requests``):

- :class:`EventStreamSlots`: at most ``jobs.max_event_streams_per_key`` open streams per key,
  ``max_event_streams_per_job`` per job and ``max_event_streams`` in all, per ingress replica; past them a 429
  names the limit;
- a stream ends after ``jobs.max_event_stream_s``. It starts with ``retry:`` and each ``segment`` event has an
  ``id:``, the highest index up to which every segment has been sent; a client that reconnects with
  ``Last-Event-ID`` gets every recorded segment past it (an ``EventSource`` does this by itself). Segments
  sent after that id, out of order, come again: each carries its ``index``.
"""

import asyncio
import json
import secrets
import time
from typing import Any, AsyncIterator, Callable

from deployments.config.jobs import JobsSettings
from deployments.edge.video_jobs import job_body, with_thumbnail_links
from deployments.errors import ApiError
from deployments.jobs.store import JobStore

EVENTS_POLL_S = 0.5
RETRY_MS = 1000  # what the stream tells a client to wait before it reconnects
_READ_BATCH = 16  # results read at once for a late joiner
_SLOT_GRACE_S = 60.0  # a slot whose stream never started (the client left first) is freed this long after the stream's end


class EventStreamSlots:
    """This ingress replica's open event streams: taken before a stream starts, given back when it ends."""

    def __init__(self, settings: JobsSettings) -> None:
        self._settings = settings
        self._open: dict[str, tuple[str, str, float]] = {}  # token -> (owner, job id, taken at)

    def take(self, owner: str, job_id: str) -> Callable[[], None]:
        """A slot for one stream of ``job_id`` (429 past a bound); the function that gives it back."""
        settings, now = self._settings, time.monotonic()
        lifetime_s = settings.max_event_stream_s + _SLOT_GRACE_S
        self._open = {token: slot for token, slot in self._open.items() if now - slot[2] < lifetime_s}
        by_key = sum(1 for slot_owner, _, _ in self._open.values() if slot_owner == owner)
        by_job = sum(1 for _, slot_job, _ in self._open.values() if slot_job == job_id)
        for count, limit, what, name in (
            (by_key, settings.max_event_streams_per_key, "this key has", "jobs.max_event_streams_per_key"),
            (by_job, settings.max_event_streams_per_job, "this job has", "jobs.max_event_streams_per_job"),
            (len(self._open), settings.max_event_streams, "this server holds", "jobs.max_event_streams"),
        ):
            if count >= limit:
                raise ApiError(429, f"Event streams: {what} {count} open; the limit is {limit} ({name}). Close one, or "
                               "poll GET /v1/video/jobs/{id} instead", code="too_many_event_streams",
                               headers={"Retry-After": "5"})
        token = secrets.token_hex(8)
        self._open[token] = (owner, job_id, now)
        return lambda: self._open.pop(token, None) and None


def last_event_id(header: str | None) -> int:
    """The ``Last-Event-ID`` a reconnecting client sends: every segment up to it was sent (-1: none)."""
    if header is None or not header.strip():
        return -1
    value = header.strip()
    if not value.lstrip("-").isdigit() or not -1 <= int(value) < 10**6:
        raise ApiError(400, f"Last-Event-ID: {value[:40]!r} is not an id this stream sent (an integer)",
                       param="last-event-id")
    return int(value)


def _event(name: str, payload: dict[str, Any], event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def job_events(
    store: JobStore, owner: str, job_id: str, *, resume_after: int, max_s: float, base: str, release: Callable[[], None]
) -> AsyncIterator[str]:
    """The stream (see the module's doc); ``release`` gives its slot back when it ends, however it ends."""
    try:
        yield f"retry: {RETRY_MS}\n\n"
        deadline = time.monotonic() + max_s
        watermark = resume_after  # every index up to it was sent (or was, before a reconnect)
        sent_past: set[int] = set()  # sent, above the watermark (results land out of order)
        last_progress: dict[str, Any] | None = None
        while True:
            job = await asyncio.to_thread(store.get, owner, job_id)
            if job is None:
                yield _event("error", {"message": f"job {job_id} is gone (expired or deleted)"})
                return
            recorded = await asyncio.to_thread(store.recorded_indices, job)
            new = sorted(index for index in recorded if index > watermark and index not in sent_past)
            for start in range(0, len(new), _READ_BATCH):
                for result in await asyncio.to_thread(store.segments, job, new[start:start + _READ_BATCH]):
                    sent_past.add(result.index)
                    while watermark + 1 in sent_past:
                        watermark += 1
                        sent_past.discard(watermark)
                    yield _event("segment", with_thumbnail_links(result, job.id, base), event_id=watermark)
            progress = {"state": job.state.value, "segments": job.segments, "done": job.done, "failed": job.failed,
                        "left": job.segments - job.done - job.failed}
            if progress != last_progress:
                yield _event("progress", progress)
                last_progress = progress
            if job.is_final:
                yield _event("done", job_body(job, base=base))
                return
            if time.monotonic() >= deadline:
                yield f": this stream has been open {max_s:g} s (jobs.max_event_stream_s); reconnect with Last-Event-ID\n\n"
                return
            await asyncio.sleep(EVENTS_POLL_S)
    finally:
        release()
