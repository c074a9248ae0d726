
import pytest
from autoscaling_context import autoscaling_context

from deployments.routing.autoscaling import ReplicaReport, desired_replicas

pytestmark = pytest.mark.unit

GIB = 1024**3
READY_WITH_ROOM = ReplicaReport(ready=True, free_bytes=30 * GIB, need_bytes=16 * GIB)


def test_scales_out_on_requests_including_queued_ones():
    desired, reason = desired_replicas(current=2, total_requests=9, target_per_replica=2, reports=[READY_WITH_ROOM] * 2)

    assert desired == 5
    assert "9 requests / target 2 -> 5" in reason


def test_does_not_add_a_replica_the_reported_headroom_cannot_hold():
    short = ReplicaReport(ready=True, free_bytes=10 * GIB, need_bytes=16 * GIB)

    desired, reason = desired_replicas(current=2, total_requests=9, target_per_replica=2, reports=[short, short])

    assert desired == 2
    assert "headroom" in reason and str(16 * GIB) in reason


def test_does_not_add_replicas_while_one_is_waiting_for_memory():
    waiting = ReplicaReport(ready=False, free_bytes=30 * GIB, need_bytes=16 * GIB)

    desired, reason = desired_replicas(current=1, total_requests=10, target_per_replica=2, reports=[waiting])

    assert desired == 1
    assert "waiting for memory" in reason


@pytest.mark.parametrize(("requests", "expected"), [(0, 0), (1, 1), (4, 2), (3.5, 2)])
def test_scales_in_freely(requests, expected):
    short = ReplicaReport(ready=False, free_bytes=0, need_bytes=16 * GIB)  # memory gates only scaling out

    desired, _ = desired_replicas(current=3, total_requests=requests, target_per_replica=2, reports=[short] * 3)

    assert desired == expected


def test_a_replica_that_has_not_reported_yet_counts_as_loading():
    from deployments.routing.autoscaling import memory_aware_policy

    just_started, _ = memory_aware_policy(autoscaling_context(running=["a"], ready={}, requests=3))
    one_loaded_one_new, reason = memory_aware_policy(autoscaling_context(running=["a", "b"], ready={"a": 1.0}, requests=3))
    both_ready, _ = memory_aware_policy(autoscaling_context(running=["a", "b"], ready={"a": 1.0, "b": 1.0}, requests=3))

    assert just_started == 1 and one_loaded_one_new == 2 and both_ready == 3
    assert "still loading" in reason["reason"]


def test_a_replica_that_has_just_loaded_counts_as_ready_at_once_not_after_half_a_window():
    from deployments.routing.autoscaling import memory_aware_policy

    # Loading for four reports, ready in the last one: the window's average is 0.2, the replica is ready.
    desired, reason = memory_aware_policy(autoscaling_context(running=["a"], ready={"a": [0, 0, 0, 0, 1]}, requests=3))

    assert desired == 3, reason
