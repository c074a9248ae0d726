"""The batch scheduler's decisions, apart from running them: pure, so they are tested without a model.

- a request's state, an enum with every allowed move in one table (:class:`RequestState`, :func:`next_state`);
- what to admit between two decode steps, and what waits (:func:`plan_admission`);
- how to answer an out-of-memory (:func:`answer_out_of_memory`): split the step, wait to run alone,
  shrink the request, or end it.

:class:`models.engines.transformers.scheduler.BatchScheduler` is the executor: it prefills, decodes and samples, and asks
this module what to do.
"""

import enum
from typing import Callable, Literal, Sequence, TypeVar

from memory.admission import admission_decision


class RequestState(str, enum.Enum):
    WAITING = "waiting"  # queued, in arrival order
    WAITING_ALONE = "waiting_alone"  # ran out of memory beside others: starts only into an empty batch
    PREFILLING = "prefilling"  # admitted: its prompt and media go through the model, with others where they allow
    PREFILLING_ALONE = "prefilling_alone"  # admitted after an out-of-memory: prefilled in a pass of its own
    RUNNING = "running"  # a row of the batch, decoding
    ENDED = "ended"  # answered, failed, cancelled or handed off


_AFTER_PREFILL = frozenset(
    # joined the batch; waits to run alone (out of memory beside others); retried smaller on its own; or ended
    {RequestState.RUNNING, RequestState.WAITING_ALONE, RequestState.PREFILLING_ALONE, RequestState.ENDED}
)
_MOVES: dict[RequestState, frozenset[RequestState]] = {
    RequestState.WAITING: frozenset({RequestState.PREFILLING, RequestState.ENDED}),
    RequestState.WAITING_ALONE: frozenset({RequestState.PREFILLING_ALONE, RequestState.ENDED}),
    RequestState.PREFILLING: _AFTER_PREFILL,
    RequestState.PREFILLING_ALONE: _AFTER_PREFILL,
    RequestState.RUNNING: frozenset({RequestState.ENDED}),
    RequestState.ENDED: frozenset(),
}
# Admitted requests count in the batch's predicted bytes; "alone" ones are prefilled in a pass of their own.
ADMITTED_STATES = frozenset({RequestState.PREFILLING, RequestState.PREFILLING_ALONE, RequestState.RUNNING})
ALONE_STATES = frozenset({RequestState.WAITING_ALONE, RequestState.PREFILLING_ALONE})


def admitted_state(waiting: RequestState) -> RequestState:
    """The state a waiting request is admitted into."""
    return RequestState.PREFILLING_ALONE if waiting is RequestState.WAITING_ALONE else RequestState.PREFILLING


class IllegalRequestMoveError(RuntimeError):
    """A move the request state machine does not allow (a bug in the executor)."""


def next_state(current: RequestState, wanted: RequestState) -> RequestState:
    if wanted not in _MOVES[current]:
        raise IllegalRequestMoveError(f"a request cannot move from {current.value} to {wanted.value}")
    return wanted


T = TypeVar("T")


def plan_admission(
    waiting: Sequence[T],
    *,
    state_of: Callable[[T], RequestState],
    alone_bytes_of: Callable[[T], int],
    batch_bytes_with: Callable[[list[T]], int],
    holding: int,
    headroom_bytes: int,
    max_batch_size: int,
    is_background: Callable[[T], bool] = lambda request: False,
) -> list[T]:
    """The waiting requests that may start now: a prefix of ``waiting`` (queue order, no overtaking; the
    queue holds interactive requests ahead of background ones).

    ``holding``: requests admitted already (prefilling or running); ``batch_bytes_with(admitted)``: the
    batch's predicted peak with the requests admitted so far in this round. A request waiting to run alone
    stops the round unless nothing is held; one that does not fit (or would not fit beside the others)
    stops it too, and waits for the batch to shrink. A background request (a long video's segment) stops it
    once the batch holds :func:`background_slots`: the rest of the batch is kept for interactive requests.
    """
    admitted: list[T] = []
    for request in waiting:
        running = holding + len(admitted)
        if state_of(request) is RequestState.WAITING_ALONE and running:
            break
        if is_background(request) and running >= background_slots(max_batch_size):
            break
        decision = admission_decision(
            alone_bytes=alone_bytes_of(request),
            batch_bytes_with=batch_bytes_with([*admitted, request]),
            headroom_bytes=headroom_bytes,
            running=running,
            max_batch_size=max_batch_size,
        )
        if decision != "admit":
            break
        admitted.append(request)
    return admitted


def background_slots(max_batch_size: int) -> int:
    """Rows of a batch background requests may hold: a quarter (at least one) is kept for interactive ones,
    unless the batch has a single row."""
    return max(1, max_batch_size - max(1, max_batch_size // 4))


OomPhase = Literal["prefill", "decode"]
OomAnswer = Literal["split_step", "wait_alone", "shrink", "end"]


def answer_out_of_memory(*, phase: OomPhase, rows: int, others_running: int, can_shrink: bool) -> OomAnswer:
    """What to do after an out-of-memory, memory already released.

    - a decode step of several rows: run it in halves (the rows stay; none is shrunk or ended);
    - a decode step of one row: end that request (its answer cannot be made smaller mid-way);
    - a prefill beside a running batch: the request waits to run alone (the batch drains first);
    - a prefill alone: retry the request smaller while the shrink minimum allows, else end it (the
      router hands it to the other group).
    """
    if phase == "decode":
        return "split_step" if rows > 1 else "end"
    if others_running:
        return "wait_alone"
    return "shrink" if can_shrink else "end"
