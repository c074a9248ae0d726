"""The batch scheduler's policy with no model: request states, admission, and the answer to an out-of-memory.

(That it imports without torch is checked with the other torch-free modules, in test_layering.py.)
"""

import dataclasses

import pytest

from models.engines.transformers.batch_policy import (
    IllegalRequestMoveError,
    RequestState,
    admitted_state,
    answer_out_of_memory,
    next_state,
    plan_admission,
)

pytestmark = pytest.mark.unit

GIB = 1024**3


@dataclasses.dataclass
class Waiting:
    name: str
    bytes: int
    state: RequestState = RequestState.WAITING


def plan(waiting, *, holding=0, held_bytes=0, headroom=6 * GIB, max_batch_size=8):
    admitted = plan_admission(
        waiting,
        state_of=lambda request: request.state,
        alone_bytes_of=lambda request: request.bytes,
        batch_bytes_with=lambda joining: held_bytes + sum(request.bytes for request in joining),
        holding=holding,
        headroom_bytes=headroom,
        max_batch_size=max_batch_size,
    )
    return [request.name for request in admitted]


def test_requests_are_admitted_in_order_while_the_batch_fits_and_none_overtakes():
    waiting = [Waiting("a", 2 * GIB), Waiting("b", 2 * GIB), Waiting("c", 3 * GIB), Waiting("d", GIB // 2)]

    assert plan(waiting) == ["a", "b"]  # c would take the batch to 7 GiB; d, which fits, waits behind it


def test_a_full_batch_admits_nothing_and_an_empty_one_admits_what_fits_alone():
    assert plan([Waiting("a", GIB)], holding=8, held_bytes=GIB) == []  # max_batch_size rows already
    assert plan([Waiting("a", 5 * GIB)], holding=0, held_bytes=3 * GIB) == ["a"]  # alone, what others hold waits
    assert plan([Waiting("a", 7 * GIB)]) == []  # never fits: the executor shrinks or hands it off before queueing


def test_a_request_waiting_to_run_alone_starts_only_into_an_empty_batch():
    alone = Waiting("alone", GIB, RequestState.WAITING_ALONE)

    assert plan([alone, Waiting("b", GIB)], holding=1, held_bytes=GIB) == []
    assert plan([alone, Waiting("b", GIB)], holding=0) == ["alone", "b"]
    assert admitted_state(RequestState.WAITING_ALONE) is RequestState.PREFILLING_ALONE
    assert admitted_state(RequestState.WAITING) is RequestState.PREFILLING


@pytest.mark.parametrize(
    ("phase", "rows", "others", "can_shrink", "answer"),
    [
        ("decode", 4, 0, False, "split_step"),  # rows stay; none is shrunk
        ("decode", 1, 0, True, "end"),  # a single row mid-answer cannot be made smaller
        ("prefill", 1, 3, True, "wait_alone"),  # beside a batch: the batch drains first
        ("prefill", 1, 0, True, "shrink"),
        ("prefill", 1, 0, False, "end"),  # at the minimum: handed to the other group
    ],
)
def test_each_out_of_memory_gets_one_answer(phase, rows, others, can_shrink, answer):
    assert answer_out_of_memory(phase=phase, rows=rows, others_running=others, can_shrink=can_shrink) == answer


def test_a_request_moves_only_along_its_table():
    state = RequestState.WAITING
    for wanted in (RequestState.PREFILLING, RequestState.WAITING_ALONE, RequestState.PREFILLING_ALONE,
                   RequestState.PREFILLING_ALONE, RequestState.RUNNING, RequestState.ENDED):
        state = next_state(state, wanted)

    assert state is RequestState.ENDED
    with pytest.raises(IllegalRequestMoveError, match="cannot move from running to waiting"):
        next_state(RequestState.RUNNING, RequestState.WAITING)
    with pytest.raises(IllegalRequestMoveError, match="cannot move from ended to running"):
        next_state(RequestState.ENDED, RequestState.RUNNING)



@dataclasses.dataclass
class Background(Waiting):
    pass


def test_background_requests_leave_a_quarter_of_the_batch_to_interactive_ones():
    from models.engines.transformers.batch_policy import background_slots

    def plan_with_background(waiting, holding):
        admitted = plan_admission(
            waiting, state_of=lambda request: request.state, alone_bytes_of=lambda request: request.bytes,
            batch_bytes_with=lambda joining: sum(request.bytes for request in joining), holding=holding,
            headroom_bytes=64 * GIB, max_batch_size=8, is_background=lambda request: isinstance(request, Background),
        )
        return [request.name for request in admitted]

    assert [background_slots(size) for size in (1, 2, 4, 8, 16)] == [1, 1, 3, 6, 12]
    segments = [Background(f"s{index}", GIB) for index in range(8)]
    assert plan_with_background(segments, holding=0) == ["s0", "s1", "s2", "s3", "s4", "s5"]
    assert plan_with_background(segments, holding=6) == []
    # An interactive request (queued ahead of background ones) takes a kept row.
    assert plan_with_background([Waiting("chat", GIB), *segments], holding=6) == ["chat"]
