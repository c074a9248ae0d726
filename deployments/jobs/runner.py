"""The job runner: a Serve deployment (one replica) that runs every long-video job's segments on the groups.

The ingress that takes ``POST /v1/video/jobs`` stores the job (:mod:`deployments.jobs.store`) and tells the
runner; the runner also reads the store every ``jobs.scan_period_s``, so a job stored while it was down, or
left unfinished by a runner that died, is adopted and carried on from the segments already recorded. Nothing
of a job lives only in an ingress, and nothing of it only in this process but what is in flight.

For each segment the runner:

1. decodes its frames in a Ray task (:mod:`deployments.jobs.decode`), placed by Ray on any node, reading the
   file from the store (ranges on S3), unless the runner's frame cache has them;
2. sends one request to the groups through the same router as the ingress's (the GPU group, the floor
   replicas, the CPU group when both are busy or down), at background priority: behind every interactive
   request in each replica's queue;
3. records the result once (a replica that dies mid-segment, or a group that cannot take it, gets the segment
   tried again, up to ``jobs.segment_attempts``; an out-of-memory is shrunk by the replica as for any request).

At most ``jobs.max_running_segments`` segments are in flight over all jobs and
``jobs.max_running_segments_per_job`` for one, taken round-robin over the jobs. When every segment has its
result, one text-only request makes the final answer. ``cancel`` stops a job: its queued segments never
start and its running ones are cancelled (the replica takes them out of its batch).
"""

import asyncio
import collections
import dataclasses
import json
import logging
import time
from typing import Any, Callable

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.config.app_config import AppConfig
from deployments.files.frame_cache import FrameCache, FrameCacheKey
from deployments.files.service import open_store
from deployments.files.store import FileRecord
from deployments.jobs.decode import DecodedSegment, decode_segment, start_decode_worker
from deployments.jobs.kinds import kind_of
from deployments.jobs.policy import (
    RETRY_PAUSE_S,
    Failure,
    RunLoad,
    SegmentAttempts,
    Verdict,
    dispatch_order,
    ready_to_finish,
    running_bound,
)
from deployments.jobs.records import JobRecord, JobState, Segment
from deployments.jobs.results import SegmentResult, failed_segment
from deployments.jobs.store import JobStore
from deployments.observability.logs import route_logs_through_serve
from deployments.replica.background import lower_priority
from deployments.replica.protocol import ReplicaAnswer, StreamOpened
from deployments.routing.group_watch import GroupWatch, cpu_group_always_runs
from deployments.routing.groups import DEPLOYMENT_NAMES, in_routing_order
from deployments.routing.interactive_load import PUBLISH_PERIOD_S, interactive_busy
from deployments.routing.job_backlog import publish_backlog
from deployments.routing.router import NoGroupAvailableError, remote_cause, router_for
from deployments.routing.shared_breaker import SharedBreakers
from models.errors import InvalidModelInputError, InvalidParameterError, PromptTooLongError
from models.media.video import FrameSelection

logger = logging.getLogger(__name__)

# A segment's own fault: trying it again elsewhere would fail the same way.
_OWN_FAULTS = (InvalidModelInputError, PromptTooLongError, InvalidParameterError)
_ADOPTION_WAIT_S = 5.0  # a cancel waits this long at most for the job's adoption to finish


@dataclasses.dataclass
class _JobRun:
    """A job this runner runs: its record, its queue and what is in flight."""

    job: JobRecord
    queue: collections.deque[Segment]
    file: FileRecord
    running: dict[int, asyncio.Task] = dataclasses.field(default_factory=dict)
    groups: dict[int, str] = dataclasses.field(default_factory=dict)  # running segment -> the group serving it
    finishing: asyncio.Task | None = None
    cancelled: bool = False
    saving: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)  # the record's writes, in order


@serve.deployment
class JobRunner:
    def __init__(self, groups: dict[str, DeploymentHandle], config: AppConfig) -> None:
        """``groups``: the running groups' handles by name (``deployments.routing.groups``), in routing order."""
        route_logs_through_serve()
        lower_priority()  # everything this process does is background work
        self._config = config
        self._settings = config.jobs
        self._files = open_store(config)
        self._store = JobStore(self._files)
        self._app_name = serve.get_replica_context().app_name
        groups = in_routing_order(groups)
        self._router = router_for(config, groups, shared_breakers=SharedBreakers(self._app_name))
        # What Serve says of the GPU groups' replicas, read before a call is routed (at most once a period): a group
        # with none running is skipped at once, as the ingress's router does, not waited on for its reach timeout.
        self._watch = GroupWatch.for_router(self._app_name, self._router)
        # The group job segments go to first: where a backlog should add replicas.
        first = next(iter(groups), None)
        self._backlog_deployment = DEPLOYMENT_NAMES[first] if first else None
        self._frames = FrameCache(config.files.frame_cache_bytes)
        self._runs: dict[str, _JobRun] = {}
        self._adopting: set[str] = set()
        self._wake = asyncio.Event()
        self._has_runs = asyncio.Event()  # set while self._runs holds a job: the interactive load is watched
        self._published_backlog: int | None = None
        self._recorded = 0
        self._duplicates = 0
        loop = asyncio.get_event_loop()
        self._under_load = False  # interactive requests in flight or recent: segments run at the lower bound
        self._tasks = [loop.create_task(self._dispatch_forever()), loop.create_task(self._scan_forever()),
                       loop.create_task(self._watch_interactive_load())]  # forever: check_health fails if one ends
        self._warming = loop.create_task(self._watch.warm_up(self._router, cpu_group_always_runs(config)))
        self._decode_worker = start_decode_worker.options(num_cpus=self._settings.decode_num_cpus).remote()

    # -- what the ingress calls ---------------------------------------------------------------------

    async def submit(self, owner: str, job_id: str) -> None:
        """Start a job the ingress has just stored (the scan would find it too, a period later)."""
        job = await asyncio.to_thread(self._store.get, owner, job_id)
        if job is not None and not job.is_final and job.id not in self._runs:
            await self._adopt(job)

    async def cancel(self, owner: str, job_id: str) -> None:
        """Stop a job now: the ingress has stored the request to cancel it."""
        deadline = time.monotonic() + _ADOPTION_WAIT_S
        while job_id in self._adopting and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # being taken: it honours the stored cancel before it is let go
        run = self._runs.get(job_id)
        if run is not None and run.job.owner == owner:
            await self._cancel(run)
            return
        job = await asyncio.to_thread(self._store.get, owner, job_id)
        if job is not None and not job.is_final:
            await self._cancel_before_start(job)

    async def _cancel_before_start(self, job: JobRecord) -> None:
        now = time.time()
        await self._save(job.moved(JobState.CANCELLED, "cancelled before it started", finished_at=now,
                                   expires_at=now + self._settings.ttl_s))

    def describe(self) -> dict[str, Any]:
        """Jobs, queued and running segments (per group), for ``/v1/memory`` and the memory view."""
        running_by_group = collections.Counter(group for run in self._runs.values() for group in run.groups.values())
        return {
            "jobs": len(self._runs),
            "queued_segments": sum(len(run.queue) for run in self._runs.values()),
            "running_segments": sum(len(run.running) for run in self._runs.values()),
            "running_segments_by_group": dict(running_by_group),
            "recorded_segments": self._recorded,
            "duplicate_results_refused": self._duplicates,
            "max_running_segments": self._bound(),
            "under_interactive_load": self._under_load,
        }

    def check_health(self) -> None:
        for task in self._tasks:
            if task.done():
                raise RuntimeError(f"The job runner's loop ended: {task.exception() if not task.cancelled() else 'cancelled'}")

    # -- adopting and scanning ----------------------------------------------------------------------

    async def _scan_forever(self) -> None:
        next_sweep = 0.0
        while True:
            try:
                await self._scan()
                if time.time() >= next_sweep:
                    await asyncio.to_thread(self._store.sweep)
                    next_sweep = time.time() + self._config.files.sweep_period_s
            except Exception:  # noqa: BLE001 - a store hiccup must not end the scanning
                logger.exception("Scanning the job store failed")
            await asyncio.to_thread(self._publish_backlog, True)
            await asyncio.sleep(self._settings.scan_period_s)

    async def _scan(self) -> None:
        for job in await asyncio.to_thread(self._store.unfinished):
            run = self._runs.get(job.id)
            if run is None:
                await self._adopt(job)
            elif not run.cancelled and await asyncio.to_thread(self._store.cancel_requested, job):
                await self._cancel(run)

    async def _adopt(self, job: JobRecord) -> None:
        if job.id in self._runs or job.id in self._adopting:
            return
        self._adopting.add(job.id)  # submit and the scan may both find a new job
        try:
            await self._take(job)
            run = self._runs.get(job.id)
            if run is not None and await asyncio.to_thread(self._store.cancel_requested, job):
                await self._cancel(run)  # a cancel stored while it was being taken
        finally:
            self._adopting.discard(job.id)

    async def _take(self, job: JobRecord) -> None:
        if await asyncio.to_thread(self._store.cancel_requested, job):
            await self._cancel_before_start(job)
            return
        # An unfinished job keeps its file: the sweep leaves it however old (files.ttl_s), until the job ends.
        file = await asyncio.to_thread(self._files.get, job.owner, job.file_id, include_expired=True)
        if file is None:
            await self._end(job, JobState.FAILED, f"its file {job.file_id} is gone (deleted)")
            return
        recorded = await asyncio.to_thread(self._store.recorded_indices, job)
        if len(recorded) != job.recorded:  # a runner that died between a result and the summary: count again
            job = await asyncio.to_thread(self._recounted, job)
        queue = collections.deque(segment for segment in kind_of(job).plan(job) if segment.index not in recorded)
        if job.state is JobState.QUEUED:
            job = job.moved(JobState.RUNNING, "running", started_at=time.time())
        if not await asyncio.to_thread(self._store.save, job):
            return  # it ended meanwhile (cancelled): the stored end stands
        run = _JobRun(job=job, queue=queue, file=file)
        self._runs[job.id] = run
        self._has_runs.set()
        logger.info("Job %s: %d of %d segments to run (%d recorded already)", job.id, len(queue), job.segments, len(recorded))
        if not queue:
            run.finishing = asyncio.get_event_loop().create_task(self._finish(run))
        self._wake.set()

    def _recounted(self, job: JobRecord, segments: list[SegmentResult] | None = None) -> JobRecord:
        """The job with its summary counted from its recorded results (``segments``, already read, or read here)."""
        counted = dataclasses.replace(job, done=0, failed=0, decode_s=0.0, inference_s=0.0, result_bytes=0)
        for result in segments if segments is not None else self._store.segments(job):
            counted = counted.counted(result, 0)
        # What they take, thumbnails included, as the store lists it: the bytes each put counted when it ran.
        return dataclasses.replace(counted, result_bytes=self._store.stored_bytes(job))

    # -- dispatching --------------------------------------------------------------------------------

    async def _dispatch_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._dispatch()
            await asyncio.to_thread(self._publish_backlog)  # a GCS call: off the event loop

    async def _watch_interactive_load(self) -> None:
        """Follow the ingresses' interactive load while there are jobs to run (with none, nothing reads it, and an
        idle server does not ask the GCS four times a second); back to the full bound when it has been quiet a while."""
        while True:
            if not self._runs:
                self._under_load = False
                await self._has_runs.wait()
            busy = await asyncio.to_thread(interactive_busy, self._app_name, self._settings.interactive_quiet_s)
            if busy != self._under_load:
                logger.info("Interactive requests %s: segments in flight at most %d", "waiting" if busy else "quiet",
                            self._settings.max_running_segments_under_load if busy else self._settings.max_running_segments)
                self._under_load = busy
                self._wake.set()
            await asyncio.sleep(PUBLISH_PERIOD_S)

    def _bound(self) -> int:
        settings = self._settings
        return running_bound(under_interactive_load=self._under_load, max_running=settings.max_running_segments,
                             max_running_under_load=settings.max_running_segments_under_load)

    def _dispatch(self) -> None:
        """Start queued segments in the policy's order (:func:`deployments.jobs.policy.dispatch_order`)."""
        runs = list(self._runs.values())
        loads = [RunLoad(queued=len(run.queue), running=len(run.running), cancelled=run.cancelled) for run in runs]
        for index in dispatch_order(loads, bound=self._bound(), per_job=self._settings.max_running_segments_per_job):
            run = runs[index]
            segment = run.queue.popleft()
            run.running[segment.index] = asyncio.get_event_loop().create_task(self._segment(run, segment))

    def _publish_backlog(self, force: bool = False) -> None:
        queued = sum(len(run.queue) for run in self._runs.values())
        # ``force`` refreshes a backlog before it goes stale; none needs no refresh (a stale figure reads as none).
        if self._backlog_deployment is None or (queued == self._published_backlog and not (force and queued)):
            return
        try:
            publish_backlog(self._app_name, {self._backlog_deployment: queued})
            self._published_backlog = queued
        except Exception as error:  # noqa: BLE001 - autoscaling on the backlog is best effort
            logger.warning("Publishing the job backlog failed: %s", error)

    # -- one segment --------------------------------------------------------------------------------

    async def _segment(self, run: _JobRun, segment: Segment) -> None:
        try:
            result, thumbnails = await self._attempts(run, segment)
            if result.file_gone:
                await self._fail_for_file(run, result.error or "")
                return
            await self._record(run, result, thumbnails)
        except asyncio.CancelledError:
            logger.info("Job %s segment %d cancelled", run.job.id, segment.index)
        except Exception:  # noqa: BLE001 - a bug must not leave the job waiting forever
            logger.exception("Job %s segment %d failed in the runner", run.job.id, segment.index)
            await self._record(run, failed_segment(segment, "the runner failed", attempts=1), [])
        finally:
            run.running.pop(segment.index, None)
            run.groups.pop(segment.index, None)
            if ready_to_finish(cancelled=run.cancelled, queued=len(run.queue), running=len(run.running),
                               finishing=run.finishing is not None):
                run.finishing = asyncio.get_event_loop().create_task(self._finish(run))
            self._wake.set()

    async def _record(self, run: _JobRun, result: SegmentResult, thumbnails: list[str]) -> None:
        """Store a segment's result once, within the job's result bytes, and count it in the job's summary."""
        job, cap = run.job, self._settings.max_result_bytes_per_job
        size = len(json.dumps(result.to_json())) + len(json.dumps(thumbnails))
        if job.result_bytes + size > cap:
            segment = Segment(result.index, result.start_s, result.end_s)
            result = failed_segment(segment, f"its result ({size} bytes) would take the job's results past "
                                    f"{cap} bytes (jobs.max_result_bytes_per_job; {job.result_bytes} recorded)",
                                    attempts=result.attempts)
            thumbnails = []
        stored = await asyncio.to_thread(self._store.put_segment, job, result, thumbnails)
        if stored is None:
            self._duplicates += 1
            logger.warning("Job %s segment %d: a result was recorded already; this one is dropped", job.id, result.index)
            return
        self._recorded += 1
        run.job = run.job.counted(result, stored)
        await self._save(run.job)

    async def _fail_for_file(self, run: _JobRun, reason: str) -> None:
        """The job's file went mid-job: every segment left would fail the same way, each at a decode's cost."""
        if run.cancelled:
            return
        run.cancelled = True
        run.queue.clear()
        current = asyncio.current_task()
        others = [task for task in run.running.values() if task is not current]
        for task in others:
            task.cancel()
        await self._end(run.job, JobState.FAILED, f"its file {run.job.file_id} went mid-job: {reason}")

    async def _attempts(self, run: _JobRun, segment: Segment) -> tuple[SegmentResult, list[str]]:
        """The segment's result: answered, or failed with the last reason.

        A call that fails after a replica took it (the replica died, a bug) spends one of ``jobs.segment_attempts``;
        no group able to take it (all busy, or none running: a group restarting) waits and tries again without
        spending one, for at most ``jobs.max_wait_for_groups_s`` in a row. ``attempts`` in the result counts
        every try."""
        job, reason = run.job, ""
        tries = SegmentAttempts(self._settings.segment_attempts, self._settings.max_wait_for_groups_s)
        while True:
            attempt = tries.start()
            try:
                decoded = await self._frames_of(run, segment)
                if decoded.frames is None:
                    return failed_segment(segment, f"its frames: {decoded.why_not}", attempts=attempt,
                                          file_gone=decoded.file_gone), []
                kind = kind_of(job)
                request = kind.segment_request(job, segment, decoded.frames, self._config.limits.max_prompt_tokens)
                answer = await self._route(request, on_opened=lambda opened: self._opened(run, segment, opened))
                result, thumbnails = kind.segment_result(job, segment, decoded.frames, answer, attempts=attempt,
                                                         decode_s=decoded.seconds, settings=self._settings)
                return dataclasses.replace(result, store_bytes_fetched=decoded.fetched_bytes, decoded_on=decoded.node_ip), thumbnails
            except _OWN_FAULTS as error:
                tries.failed(Failure.OWN_FAULT, time.monotonic())
                return failed_segment(segment, str(remote_cause(error)), attempts=attempt), []
            except NoGroupAvailableError as error:
                reason = f"no group could take it: {error}"
                if tries.failed(Failure.NO_GROUP, time.monotonic()) is Verdict.RECORD_FAILED:
                    return failed_segment(segment, f"{reason} (for {self._settings.max_wait_for_groups_s:g} s, "
                                          "jobs.max_wait_for_groups_s)", attempts=attempt), []
            except Exception as error:  # noqa: BLE001 - a replica that died mid-segment: try again elsewhere
                cause = remote_cause(error)
                reason = f"{type(cause).__name__}: {str(cause).splitlines()[0][:300] if str(cause) else ''}"
                if tries.failed(Failure.REPLICA, time.monotonic()) is Verdict.RECORD_FAILED:
                    return failed_segment(segment, reason, attempts=attempt), []
            finally:
                run.groups.pop(segment.index, None)
            pause = tries.pause_s()
            logger.warning("Job %s segment %d, try %d: %s; again in %.0f s", job.id, segment.index, attempt, reason, pause)
            await asyncio.sleep(pause)

    def _opened(self, run: _JobRun, segment: Segment, opened: StreamOpened) -> None:
        run.groups[segment.index] = opened.served_by.group

    async def _frames_of(self, run: _JobRun, segment: Segment) -> DecodedSegment:
        """The segment's frames from the frame cache (decoded on no node, nothing fetched), or decoded by a Ray task
        (cancelled with the segment)."""
        job, limits = run.job, self._config.limits
        selection = FrameSelection(num_frames=job.frames_per_segment, fps=job.fps, start_s=segment.start_s, end_s=segment.end_s)
        video_limits = self._settings.video_limits(limits)
        key = FrameCacheKey.of(job.owner, job.file_sha256, selection, video_limits)
        cached = self._frames.get(key)
        if cached is not None:
            return DecodedSegment(cached, None, 0.0, 0, None)
        reference = decode_segment.options(num_cpus=self._settings.decode_num_cpus).remote(
            self._files.url, self._config.files.storage_options, run.file, selection, video_limits,
            limits.max_decoded_frames, limits.max_decoded_pixels,
        )
        try:
            decoded: DecodedSegment = await reference
        except asyncio.CancelledError:
            ray.cancel(reference)
            raise
        if decoded.frames is not None and decoded.frames.substituted == 0:
            self._frames.put(key, decoded.frames)
        return decoded

    # -- the end ------------------------------------------------------------------------------------

    async def _finish(self, run: _JobRun) -> None:
        """Every segment recorded: the final answer over the timeline, then the job's end."""
        job = run.job
        try:
            segments = await asyncio.to_thread(self._store.segments, job)
            if len(segments) != job.recorded:
                # Results this run did not count: another runner's (two took the job: a rolling update's old and new
                # replica, or two apps on one store). The record's summary is what is recorded.
                logger.warning("Job %s: %d results recorded, %d counted by this runner; counting them again", job.id,
                               len(segments), job.recorded)
                job = run.job = await asyncio.to_thread(self._recounted, job, segments)
            answered = [result for result in segments if result.answered]
            if not answered:
                first = next((result.error or "" for result in segments), "no result")
                await self._end(job, JobState.FAILED, f"every segment failed; the first: {first}")
                return
            if job.state is JobState.RUNNING:
                job = run.job = job.moved(JobState.FINALIZING, "making the final answer")
                await self._save(job)
            answer, kept = await self._final_answer(job, segments)
            await self._end(
                job, JobState.SUCCEEDED, "done", final_answer=answer.result.text,
                final_usage={"prompt_tokens": answer.result.prompt_tokens, "completion_tokens": answer.result.completion_tokens},
                final_served_by={"group": answer.served_by.group, "replica": answer.served_by.replica,
                                 "precision": answer.served_by.precision},
                final_inference_s=round(answer.inference_seconds or 0.0, 4),
                timeline_events_used=kept,
            )
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - the job ends failed, with the reason
            logger.exception("Job %s: the final answer failed", job.id)
            await self._end(job, JobState.FAILED, f"the final answer failed: {type(error).__name__}: {remote_cause(error)}")

    async def _route(
        self, request: Any, on_opened: Callable[[StreamOpened], None] = lambda opened: None
    ) -> ReplicaAnswer:
        """One request through the router, once it knows which GPU groups have a replica running."""
        await self._watch.fresh()
        return await self._router.call("generate_stream", request, on_opened=on_opened)

    async def _final_answer(self, job: JobRecord, segments: list[SegmentResult]) -> tuple[ReplicaAnswer, int]:
        """The kind's final request, or its next smaller one while a request is too long for the model."""
        requests = kind_of(job).final_requests(job, segments, self._config.limits.max_prompt_tokens)
        (request, kept), attempt = next(requests), 0
        while True:
            try:
                return await self._route(request), kept
            except PromptTooLongError:
                smaller = next(requests, None)
                if smaller is None:
                    raise
                request, kept = smaller
            except NoGroupAvailableError:
                attempt += 1
                if attempt >= self._settings.segment_attempts:
                    raise
                await asyncio.sleep(RETRY_PAUSE_S * 2**attempt)

    async def _cancel(self, run: _JobRun) -> None:
        if run.cancelled:
            return
        run.cancelled = True
        queued = len(run.queue)
        run.queue.clear()
        tasks = [*run.running.values(), *([run.finishing] if run.finishing else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        logger.info("Job %s cancelled: %d queued segments dropped, %d running ones stopped", run.job.id, queued, len(tasks))
        await self._end(run.job, JobState.CANCELLED, f"cancelled: {queued} queued segments never ran, {len(tasks)} stopped")

    async def _end(self, job: JobRecord, state: JobState, reason: str, **changes: Any) -> None:
        now = time.time()
        if job.is_final:
            return
        run = self._runs.get(job.id)
        if run is not None:
            job = run.job  # its summary as last counted
        if state is JobState.SUCCEEDED and await asyncio.to_thread(self._store.cancel_requested, job):
            # A client told its cancel was taken (a runner that had not seen it yet) never sees it succeed.
            state, reason, changes = JobState.CANCELLED, "cancelled while its final answer was being made", {}
        try:
            await self._save(job.moved(state, reason, finished_at=now, expires_at=now + self._settings.ttl_s, **changes))
        finally:  # even when this task is cancelled mid-save: a run left here would never be let go
            self._runs.pop(job.id, None)
            if not self._runs:
                self._has_runs.clear()
            self._wake.set()
        logger.info("Job %s %s: %s", job.id, state.value, reason)

    async def _save(self, job: JobRecord) -> bool:
        """Write the record (in order, one write of a job at a time); ``False`` when the stored one has ended."""
        run = self._runs.get(job.id)
        if run is None:
            return await asyncio.to_thread(self._store.save, job)
        run.job = job  # callers derive it from run.job: the newest
        async with run.saving:  # a save waiting here writes the newest record then, never an older one
            return await asyncio.to_thread(self._store.save, run.job)
