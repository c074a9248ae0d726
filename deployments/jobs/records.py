"""What a job is on disk: its record (:class:`JobRecord`), its life as a state machine, its segments' results.

::

    queued ---> running ---> finalizing ---> succeeded
       |           |             |
       |           +-------------+---------> failed
       +-----------+-------------+---------> cancelled

- ``queued``: stored by the ingress that took it; no runner has started a segment yet;
- ``running``: a runner sends its segments to the groups;
- ``finalizing``: every segment has its result; one text-only request builds the final answer;
- ``succeeded``: the timeline and the final answer are there (segments that failed are listed as such);
- ``failed``: every segment failed, or the final answer could not be made; the reason says why;
- ``cancelled``: ``DELETE /v1/video/jobs/{id}``; its queued segments never ran, its running ones were aborted.

A runner that adopts a job after a restart finds it ``queued``, ``running`` or ``finalizing`` and carries on
from the segments already recorded.
"""

import dataclasses
import enum
import secrets
from typing import Any

from deployments.jobs.results import SegmentResult


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    FINALIZING = "finalizing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


_MOVES: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.FINALIZING, JobState.FAILED, JobState.CANCELLED}),
    JobState.FINALIZING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}
FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class IllegalJobMoveError(RuntimeError):
    """A move the job's state machine does not allow (a bug in the caller)."""


def new_job_id() -> str:
    return f"job-{secrets.token_hex(12)}"


def looks_like_job_id(job_id: str) -> bool:
    """Ids are ``job-`` and 24 hex digits: anything else never reaches the store's paths."""
    suffix = job_id.removeprefix("job-")
    return job_id.startswith("job-") and len(suffix) == 24 and all(c in "0123456789abcdef" for c in suffix)


@dataclasses.dataclass(frozen=True)
class Segment:
    """One range of the video, ``[start_s, end_s)`` in the whole video's clock."""

    index: int
    start_s: float
    end_s: float


@dataclasses.dataclass(frozen=True)
class JobRecord:
    """A job as stored (``job.json``): what was asked, the plan, and where it stands."""

    id: str
    owner: str
    file_id: str
    filename: str
    file_sha256: str
    question: str
    duration_s: float
    segment_s: float
    frames_per_segment: int | None
    fps: float | None
    json_schema: str  # sorted-keys JSON: each segment's answer validates against it
    custom_schema: bool  # the caller's schema (False: the default list of events)
    max_tokens: int
    final_max_tokens: int
    temperature: float
    seed: int | None
    segments: int
    created_at: float
    state: JobState = JobState.QUEUED
    reason: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None  # set when the job ends: ``jobs.ttl_s`` later
    final_answer: str | None = None
    final_usage: dict[str, int] | None = None
    final_served_by: dict[str, str] | None = None
    timeline_events_used: int | None = None  # how many events the final answer's prompt held
    final_inference_s: float | None = None  # the final answer's time in the model
    # The runner's running summary of the recorded segments, so that reading a job never reads every result.
    done: int = 0
    failed: int = 0
    decode_s: float = 0.0
    inference_s: float = 0.0
    result_bytes: int = 0  # the results' stored bytes (thumbnails included): counted against jobs.max_result_bytes_per_job
    kind: str = "video_timeline"  # what the job asks of each segment and of their answers (deployments.jobs.kinds)

    def plan(self) -> list[Segment]:
        return plan_segments(self.duration_s, self.segment_s)

    def moved(self, state: JobState, reason: str = "", **changes: Any) -> "JobRecord":
        """This record in ``state``; :class:`IllegalJobMoveError` if the machine does not allow the move."""
        if state not in _MOVES[self.state]:
            raise IllegalJobMoveError(f"job {self.id}: cannot move from {self.state.value} to {state.value} ({reason})")
        return dataclasses.replace(self, state=state, reason=reason, **changes)

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "state": self.state.value}

    @property
    def recorded(self) -> int:
        return self.done + self.failed

    def counted(self, result: SegmentResult, stored_bytes: int) -> "JobRecord":
        """This record with one more recorded segment in its summary."""
        return dataclasses.replace(
            self,
            done=self.done + result.answered,
            failed=self.failed + (not result.answered),
            decode_s=round(self.decode_s + result.decode_s, 4),
            inference_s=round(self.inference_s + result.inference_s, 4),
            result_bytes=self.result_bytes + stored_bytes,
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "JobRecord":
        return cls(**{**data, "state": JobState(data["state"])})


def plan_segments(duration_s: float, segment_s: float) -> list[Segment]:
    """``[0, duration)`` cut into ``segment_s`` pieces; a last piece under a second joins the one before it."""
    starts = []
    start = 0.0
    while start < duration_s:
        starts.append(start)
        start = round(start + segment_s, 6)
    if len(starts) > 1 and duration_s - starts[-1] < 1.0:
        starts.pop()
    ends = [*starts[1:], duration_s]
    return [Segment(index, start_s, end_s) for index, (start_s, end_s) in enumerate(zip(starts, ends))]


def segment_count(duration_s: float, segment_s: float) -> int:
    return len(plan_segments(duration_s, segment_s))
