"""A replica's life as a state machine: its states, the moves allowed between them, and one ``is_serving``.

The moves (``_MOVES``, the only table)::

    loading            -> waiting_for_memory | ready | failed | unloaded
    waiting_for_memory -> waiting_for_memory | ready | failed | unloaded
    ready              -> unloaded | failed
    failed             -> unloaded
    unloaded           -> (none)

- ``loading``: the loader thread is trying the chain (the first state);
- ``waiting_for_memory``: nothing fits now (or no GPU is visible); measured again every period;
- ``ready``: a strategy loaded and the engine runs: the only state that serves;
- ``unloaded``: the model was let go (an operator freed the memory, or the replica is stopping); it moves nowhere;
- ``failed``: a non-memory error a retry cannot mend (health fails, Serve restarts the replica); it moves only to
  ``unloaded``, when the model is let go before Serve replaces the replica.

Neither serves again (``FINAL_STATES``): Serve replaces the replica.

Every reader (``describe``, ``/readyz``, the routing stats, the autoscaling stats, ``check_health``) asks
:attr:`ReplicaLifecycle.is_serving` or :attr:`ReplicaLifecycle.state`; nothing else says whether a replica serves.
"""

import enum
import logging
import threading

logger = logging.getLogger(__name__)


class ReplicaState(str, enum.Enum):
    LOADING = "loading"
    WAITING_FOR_MEMORY = "waiting_for_memory"
    READY = "ready"
    UNLOADED = "unloaded"
    FAILED = "failed"


_MOVES: dict[ReplicaState, frozenset[ReplicaState]] = {
    ReplicaState.LOADING: frozenset(
        {ReplicaState.WAITING_FOR_MEMORY, ReplicaState.READY, ReplicaState.FAILED, ReplicaState.UNLOADED}
    ),
    ReplicaState.WAITING_FOR_MEMORY: frozenset(
        {ReplicaState.WAITING_FOR_MEMORY, ReplicaState.READY, ReplicaState.FAILED, ReplicaState.UNLOADED}
    ),
    ReplicaState.READY: frozenset({ReplicaState.UNLOADED, ReplicaState.FAILED}),
    ReplicaState.UNLOADED: frozenset(),
    ReplicaState.FAILED: frozenset({ReplicaState.UNLOADED}),
}
FINAL_STATES = frozenset({ReplicaState.UNLOADED, ReplicaState.FAILED})  # never serve again


class IllegalMoveError(RuntimeError):
    """A move the state machine does not allow (a bug in the caller)."""


class ReplicaLifecycle:
    """The state and its reason, moved under a lock from the loader thread and the serving threads."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self.state = ReplicaState.LOADING
        self.reason = "loading"
        self.first_load_settled = threading.Event()  # set once the first load ends, whatever its outcome

    @property
    def is_serving(self) -> bool:
        return self.state is ReplicaState.READY

    def move(self, state: ReplicaState, reason: str) -> None:
        """Move to ``state``; :class:`IllegalMoveError` if the machine does not allow it."""
        if not self.try_move(state, reason):
            raise IllegalMoveError(f"{self._name}: cannot move from {self.state.value} to {state.value} ({reason})")

    def try_move(self, state: ReplicaState, reason: str) -> bool:
        """Move to ``state`` if allowed (``False`` when not: an unload won the race with a load, say)."""
        with self._lock:
            if state not in _MOVES[self.state]:
                return False
            if (state, reason) != (self.state, self.reason):
                log = logger.info if state in (ReplicaState.READY, ReplicaState.LOADING) else logger.warning
                log("%s: %s (%s)", self._name, state.value, reason)
            self.state, self.reason = state, reason
        self.first_load_settled.set()
        return True
