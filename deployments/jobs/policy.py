"""The job runner's decisions, without its I/O: which segments start next, what a failed try leads to, and when a
job is ready for its final answer. The runner (:mod:`deployments.jobs.runner`) holds the tasks and the store and
asks these; ``tests/test_job_policy.py`` checks them on their own, with a clock and counts instead of a cluster.
"""

import dataclasses
import enum
from typing import Sequence

RETRY_PAUSE_S = 1.0
MAX_RETRY_PAUSE_S = 10.0


@dataclasses.dataclass(frozen=True)
class RunLoad:
    """What dispatching needs of one job's run: segments queued and running, and whether it was cancelled."""

    queued: int
    running: int
    cancelled: bool = False


def dispatch_order(runs: Sequence[RunLoad], *, bound: int, per_job: int) -> list[int]:
    """The runs to start a segment of, one entry a segment, in order: one job at a time round-robin, until ``bound``
    segments run in all (``jobs.max_running_segments``, lower under interactive load) or every job is at ``per_job``
    (``jobs.max_running_segments_per_job``) or out of segments. A cancelled run starts nothing."""
    queued = [run.queued if not run.cancelled else 0 for run in runs]
    running = [run.running for run in runs]
    total = sum(running)
    order: list[int] = []
    progressed = True
    while progressed and total < bound:
        progressed = False
        for index in range(len(runs)):
            if total >= bound:
                break
            if queued[index] == 0 or running[index] >= per_job:
                continue
            queued[index] -= 1
            running[index] += 1
            total += 1
            order.append(index)
            progressed = True
    return order


def running_bound(*, under_interactive_load: bool, max_running: int, max_running_under_load: int) -> int:
    """Segments in flight at most now; never under 1, so that jobs always move, however busy people are."""
    return max(1, max_running_under_load if under_interactive_load else max_running)


class Failure(enum.Enum):
    OWN_FAULT = "own_fault"  # the segment's own (a prompt too long, an invalid input): it would fail anywhere
    NO_GROUP = "no_group"  # no group could take it (all busy, or none running): not the segment's fault
    REPLICA = "replica"  # a replica took it and failed (it died, a bug): another may not


class Verdict(enum.Enum):
    RECORD_FAILED = "record_failed"
    TRY_AGAIN = "try_again"


@dataclasses.dataclass
class SegmentAttempts:
    """One segment's tries: a replica's failure spends one of ``attempts``; no group able to take it waits and tries
    again without spending one, for at most ``max_wait_for_groups_s`` in a row; its own fault ends it at once."""

    attempts: int  # jobs.segment_attempts
    max_wait_for_groups_s: float  # jobs.max_wait_for_groups_s
    tries: int = 0
    spent: int = 0
    unavailable_since: float | None = None

    @property
    def may_try(self) -> bool:
        return self.spent < self.attempts

    def start(self) -> int:
        """A try begins; its number (1 for the first)."""
        self.tries += 1
        return self.tries

    def failed(self, failure: Failure, now: float) -> Verdict:
        if failure is Failure.OWN_FAULT:
            return Verdict.RECORD_FAILED
        if failure is Failure.NO_GROUP:
            self.unavailable_since = self.unavailable_since if self.unavailable_since is not None else now
            if now - self.unavailable_since > self.max_wait_for_groups_s:
                return Verdict.RECORD_FAILED
            return Verdict.TRY_AGAIN
        self.spent += 1
        self.unavailable_since = None
        return Verdict.TRY_AGAIN if self.may_try else Verdict.RECORD_FAILED

    def pause_s(self) -> float:
        """How long to wait before the next try: doubling from 1 s, at most 10 s."""
        return min(MAX_RETRY_PAUSE_S, RETRY_PAUSE_S * 2 ** min(self.tries - 1, 4))


def ready_to_finish(*, cancelled: bool, queued: int, running: int, finishing: bool) -> bool:
    """Every segment recorded, none running, not cancelled, and no final answer under way: time for the final answer."""
    return not cancelled and queued == 0 and running == 0 and not finishing
