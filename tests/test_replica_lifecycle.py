"""The replica's state machine on its own: the moves it allows, the ones it refuses, and who serves."""

import pytest

from deployments.replica.lifecycle import IllegalMoveError, ReplicaLifecycle, ReplicaState

pytestmark = pytest.mark.unit


def test_a_replica_serves_only_while_ready():
    lifecycle = ReplicaLifecycle("replica r1")
    seen = [(lifecycle.state, lifecycle.is_serving)]

    for state in (ReplicaState.WAITING_FOR_MEMORY, ReplicaState.READY, ReplicaState.UNLOADED):
        lifecycle.move(state, state.value)
        seen.append((lifecycle.state, lifecycle.is_serving))

    assert seen == [
        (ReplicaState.LOADING, False),
        (ReplicaState.WAITING_FOR_MEMORY, False),
        (ReplicaState.READY, True),
        (ReplicaState.UNLOADED, False),
    ]
    assert lifecycle.first_load_settled.is_set()


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ((ReplicaState.READY,), ReplicaState.WAITING_FOR_MEMORY),  # a loaded replica never waits again
        ((ReplicaState.READY, ReplicaState.UNLOADED), ReplicaState.READY),  # unloaded is final
        ((ReplicaState.FAILED,), ReplicaState.READY),  # so is failed, but for stopping
        ((ReplicaState.UNLOADED,), ReplicaState.FAILED),
    ],
)
def test_moves_out_of_order_are_refused_and_change_nothing(path, refused):
    lifecycle = ReplicaLifecycle("replica r1")
    for state in path:
        lifecycle.move(state, state.value)

    with pytest.raises(IllegalMoveError, match=f"cannot move from {path[-1].value} to {refused.value}"):
        lifecycle.move(refused, "late")
    assert lifecycle.try_move(refused, "late") is False
    assert (lifecycle.state, lifecycle.reason) == (path[-1], path[-1].value)


def test_the_first_load_settles_on_its_first_outcome_only():
    lifecycle = ReplicaLifecycle("replica r1")
    assert not lifecycle.first_load_settled.is_set()

    lifecycle.move(ReplicaState.WAITING_FOR_MEMORY, "2.0 GiB short")

    assert lifecycle.first_load_settled.is_set() and not lifecycle.is_serving
