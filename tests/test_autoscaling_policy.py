import pytest

from deployments.autoscaling import ReplicaReport, desired_replicas

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
