"""The job runner's decisions on their own (deployments/jobs/policy.py): which segments start next, what a failed
try leads to, when a job is ready for its final answer. The runner that acts on them runs through real Serve in
tests/integration/test_video_jobs.py and test_job_bounds.py."""

import pytest

from deployments.jobs.policy import (
    Failure,
    RunLoad,
    SegmentAttempts,
    Verdict,
    dispatch_order,
    ready_to_finish,
    running_bound,
)

pytestmark = pytest.mark.unit


def test_segments_start_one_job_at_a_time_round_robin_within_the_bound():
    runs = [RunLoad(queued=5, running=0), RunLoad(queued=5, running=0), RunLoad(queued=1, running=0)]

    assert dispatch_order(runs, bound=5, per_job=10) == [0, 1, 2, 0, 1]


def test_a_job_at_its_own_bound_waits_and_the_others_take_its_turns():
    runs = [RunLoad(queued=9, running=2), RunLoad(queued=9, running=0)]

    assert dispatch_order(runs, bound=6, per_job=2) == [1, 1]  # the first job already runs its two


def test_what_runs_already_counts_against_the_bound_and_a_cancelled_job_starts_nothing():
    assert dispatch_order([RunLoad(queued=3, running=4)], bound=4, per_job=10) == []
    assert dispatch_order([RunLoad(queued=3, running=0, cancelled=True), RunLoad(queued=1, running=0)],
                          bound=4, per_job=10) == [1]
    assert dispatch_order([], bound=4, per_job=10) == []


def test_the_bound_is_lower_under_interactive_load_and_never_zero():
    assert running_bound(under_interactive_load=False, max_running=8, max_running_under_load=2) == 8
    assert running_bound(under_interactive_load=True, max_running=8, max_running_under_load=2) == 2
    assert running_bound(under_interactive_load=True, max_running=8, max_running_under_load=0) == 1


def test_a_replica_s_failures_spend_attempts_until_none_is_left():
    tries = SegmentAttempts(attempts=3, max_wait_for_groups_s=60)

    verdicts = []
    for _ in range(3):
        tries.start()
        verdicts.append(tries.failed(Failure.REPLICA, now=0.0))

    assert verdicts == [Verdict.TRY_AGAIN, Verdict.TRY_AGAIN, Verdict.RECORD_FAILED]
    assert (tries.tries, tries.spent) == (3, 3)


def test_no_group_waits_without_spending_an_attempt_for_a_bounded_time_in_a_row():
    tries = SegmentAttempts(attempts=1, max_wait_for_groups_s=30)

    tries.start()
    assert tries.failed(Failure.NO_GROUP, now=100.0) is Verdict.TRY_AGAIN
    tries.start()
    assert tries.failed(Failure.NO_GROUP, now=129.0) is Verdict.TRY_AGAIN  # 29 s without a group: still waiting
    assert tries.spent == 0
    tries.start()
    assert tries.failed(Failure.NO_GROUP, now=131.0) is Verdict.RECORD_FAILED  # past 30 s in a row


def test_a_replica_failure_between_waits_restarts_the_wait():
    tries = SegmentAttempts(attempts=2, max_wait_for_groups_s=30)

    tries.start()
    tries.failed(Failure.NO_GROUP, now=0.0)
    tries.start()
    assert tries.failed(Failure.REPLICA, now=25.0) is Verdict.TRY_AGAIN
    tries.start()
    assert tries.failed(Failure.NO_GROUP, now=40.0) is Verdict.TRY_AGAIN  # 0 s in a row, not 40


def test_the_segment_s_own_fault_is_recorded_at_once():
    tries = SegmentAttempts(attempts=5, max_wait_for_groups_s=30)
    tries.start()

    assert tries.failed(Failure.OWN_FAULT, now=0.0) is Verdict.RECORD_FAILED
    assert tries.spent == 0


def test_pauses_double_from_a_second_up_to_ten():
    tries = SegmentAttempts(attempts=10, max_wait_for_groups_s=30)

    pauses = []
    for _ in range(6):
        tries.start()
        pauses.append(tries.pause_s())

    assert pauses == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


@pytest.mark.parametrize(("cancelled", "queued", "running", "finishing", "ready"), [
    (False, 0, 0, False, True),
    (True, 0, 0, False, False),  # a cancelled job ends cancelled, with no final answer
    (False, 1, 0, False, False),
    (False, 0, 1, False, False),
    (False, 0, 0, True, False),  # one final answer a job
])
def test_a_job_is_ready_for_its_final_answer_once_nothing_is_left_to_run(cancelled, queued, running, finishing, ready):
    assert ready_to_finish(cancelled=cancelled, queued=queued, running=running, finishing=finishing) is ready
