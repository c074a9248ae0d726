"""Which replica group answers, telling a busy group from a broken one.

Every call is a stream from the replica (:mod:`deployments.replica_protocol`), timed in two phases,
never on its whole length:

1. **reach**: the replica yields :class:`Accepted` within ``reach_timeout_s``. A group that does not
   (a replica that can never be scheduled queues calls forever), is unavailable
   (``DeploymentUnavailableError``, a replica still loading or waiting for memory) or dies mid-call is
   **broken**: the call goes to the other group and the GPU group's circuit breaker opens.
2. **admission**: the replica admits the request and yields :class:`StreamOpened` (its first token
   exists) within ``admission_timeout_s``. A group whose queues are full (``BackPressureError`` from
   Serve's ``max_queued_requests``, :class:`ReplicaBusyError` from the replica), that does not admit in
   time, or that cannot fit the request (:class:`RequestOutOfMemoryError`) is **busy**: the call is
   cancelled there and goes to the other group, and the breaker stays closed.

After admission a call runs to its end where it started, however long: a long answer from a healthy
replica is never abandoned. A call that is abandoned (a timeout, the client gone) is cancelled on the
replica, which takes it out of its batch.

The breaker settles every outcome in ``finally``: a request's own fault (a 4xx, an out-of-memory of
that request, a client that left) counts as the group being healthy; only the group's faults open it.
"""

import asyncio
import dataclasses
import enum
import logging
import time
from typing import Any, Callable

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from deployments.replica_protocol import CPU_GROUP, GPU_GROUP, Accepted, ReplicaAnswer, ReplicaUnavailableError, StreamOpened
from models.errors import ReplicaBusyError, RequestOutOfMemoryError, SchedulerClosedError

logger = logging.getLogger(__name__)

BROKEN_ERRORS = (RayActorError, DeploymentUnavailableError, ReplicaUnavailableError, SchedulerClosedError)
BUSY_ERRORS = (BackPressureError, ReplicaBusyError, RequestOutOfMemoryError)


class NoGroupAvailableError(RuntimeError):
    """Neither group could take the request; the message says why for each."""

    def __init__(self, message: str, *, busy: bool) -> None:
        super().__init__(message)
        self.busy = busy  # every group that was tried is busy, none broken


class Outcome(str, enum.Enum):
    SERVED = "served"  # admitted (or the request's own fault): the group is healthy
    BUSY = "busy"  # full or cannot fit this request: try the other group, the group is healthy
    BROKEN = "broken"  # unreachable, unavailable, died: try the other group, open the breaker


class _PhaseTimeout(Exception):
    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


def classify(error: BaseException) -> Outcome | None:
    """Whether an error before admission moves the call to the other group, and why; ``None``: it does not."""
    if isinstance(error, _PhaseTimeout):
        return error.outcome
    cause = remote_cause(error)  # the error itself when Ray did not wrap it
    if isinstance(cause, BROKEN_ERRORS):
        return Outcome.BROKEN
    if isinstance(cause, BUSY_ERRORS):
        return Outcome.BUSY
    return None


@dataclasses.dataclass
class CircuitBreaker:
    """Closed: calls go through. Open: skipped until ``cooldown_s`` has passed, then one probe."""

    cooldown_s: float
    clock: Callable[[], float] = time.monotonic
    opened_at: float | None = None
    last_reason: str | None = None
    probing: bool = False

    def allows(self) -> bool:
        if self.opened_at is None:
            return True
        if self.probing or self.clock() - self.opened_at < self.cooldown_s:
            return False
        self.probing = True  # one probe at a time
        return True

    def record_success(self) -> None:
        if self.opened_at is not None:
            logger.info("GPU group answered again; closing the circuit breaker")
        self.opened_at, self.last_reason, self.probing = None, None, False

    def record_failure(self, reason: str) -> None:
        if self.opened_at is None:
            logger.warning("GPU group unavailable (%s); CPU group takes traffic for %.0f s", reason, self.cooldown_s)
        self.opened_at, self.last_reason, self.probing = self.clock(), reason, False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.cooldown_s else "open"


@dataclasses.dataclass(frozen=True)
class GroupTimeouts:
    reach_s: float
    admission_s: float


class GroupRouter:
    """Sends each call to the GPU group or the CPU group; counts what it did."""

    def __init__(
        self,
        gpu_group: DeploymentHandle | None,
        cpu_group: DeploymentHandle | None,
        *,
        gpu_timeouts: GroupTimeouts,
        cpu_timeouts: GroupTimeouts,
        breaker: CircuitBreaker,
        on_fallback: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self._gpu = gpu_group
        self._cpu = cpu_group
        self._timeouts = {GPU_GROUP: gpu_timeouts, CPU_GROUP: cpu_timeouts}
        self.breaker = breaker
        self._on_fallback = on_fallback
        # Updated from Serve's status by the ingress: with no running GPU replica (none scheduled,
        # all restarting) a call would only queue until the timeout, so skip the GPU group at once.
        self.gpu_running_replicas: int | None = None

    async def call(self, method: str, *args: Any) -> ReplicaAnswer:
        """The whole answer of the streaming ``method`` (asked for without its text pieces).

        Nothing has reached the client yet, so a GPU replica that dies (or is unloaded) after it
        admitted the call is a broken group like any other: the breaker opens and the CPU group
        answers the call from the start.
        """
        opened, stream = await self.open_stream(method, *args, stream_text=False)
        try:
            return await _answer_of(stream, method)
        except BaseException as error:
            if opened.served_by.group != GPU_GROUP or self._cpu is None or classify(error) is not Outcome.BROKEN:
                raise
            reason = f"replica {opened.served_by.replica} ended mid-call: {_describe(error)}"
        self.breaker.record_failure(reason)
        logger.warning("GPU group broke during a call (%s); the CPU group answers it from the start", reason)
        self._on_fallback(reason)
        _, cpu_reason, reopened = await self._try_group(CPU_GROUP, self._cpu, method, args, False)
        if reopened is None:
            raise NoGroupAvailableError(f"GPU group: {reason}; CPU group: {cpu_reason}", busy=False)
        return await _answer_of(reopened[1], method)

    async def open_stream(self, method: str, *args: Any, stream_text: bool = True) -> tuple[StreamOpened, DeploymentResponseGenerator]:
        """Start the streaming ``method`` on the group that admits it; its :class:`StreamOpened` and the rest."""
        gpu_reason, gpu_outcome = "the GPU group is disabled", Outcome.BUSY
        if self._gpu is not None:
            gpu_outcome = Outcome.BROKEN
            if self.gpu_running_replicas == 0:
                gpu_reason = "no GPU-group replica is running (unschedulable, starting or restarting)"
            elif self.breaker.allows():
                gpu_outcome, gpu_reason, opened = await self._try_group(GPU_GROUP, self._gpu, method, args, stream_text)
                if opened is not None:
                    return opened
                if gpu_outcome is Outcome.BUSY:
                    logger.info("GPU group busy (%s); the CPU group takes the call", gpu_reason)
            else:
                gpu_reason = f"circuit breaker open after: {self.breaker.last_reason}"
        if self._cpu is None:
            raise NoGroupAvailableError(
                f"GPU group: {gpu_reason}; the CPU group is disabled", busy=gpu_outcome is Outcome.BUSY
            )
        self._on_fallback(gpu_reason)
        cpu_outcome, cpu_reason, opened = await self._try_group(CPU_GROUP, self._cpu, method, args, stream_text)
        if opened is not None:
            return opened
        raise NoGroupAvailableError(
            f"GPU group: {gpu_reason}; CPU group: {cpu_reason}",
            busy=cpu_outcome is Outcome.BUSY and gpu_outcome is not Outcome.BROKEN,
        )

    async def _try_group(
        self, group: str, handle: DeploymentHandle, method: str, args: tuple, stream_text: bool
    ) -> tuple[Outcome, str, tuple[StreamOpened, DeploymentResponseGenerator] | None]:
        """Open the stream on one group; settles the breaker (GPU group) whatever happens."""
        outcome, reason = Outcome.SERVED, ""
        try:
            opened = await self._open(group, handle, method, args, stream_text)
            return Outcome.SERVED, "", opened
        except BaseException as error:
            classified = classify(error)
            if classified is None:
                raise  # the request's own fault (4xx), a client that left, or a bug: the group is fine
            outcome, reason = classified, _describe(error)
            if outcome is Outcome.BUSY:
                reason = f"{_BUSY_PREFIX}{reason}"
            return outcome, reason, None
        finally:
            if group == GPU_GROUP:
                if outcome is Outcome.BROKEN:
                    self.breaker.record_failure(reason)
                else:
                    self.breaker.record_success()

    async def _open(
        self, group: str, handle: DeploymentHandle, method: str, args: tuple, stream_text: bool
    ) -> tuple[StreamOpened, DeploymentResponseGenerator]:
        timeouts = self._timeouts[group]
        stream = handle.options(method_name=method, stream=True).remote(*args, stream_text=stream_text)
        try:
            accepted = await _next(stream, timeouts.reach_s, Outcome.BROKEN, f"the {group} group took no call within")
            if not isinstance(accepted, Accepted):
                raise RuntimeError(f"{method} sent {type(accepted).__name__} before Accepted")
            opened = await _next(stream, timeouts.admission_s, Outcome.BUSY, f"the {group} group admitted nothing within")
            if not isinstance(opened, StreamOpened):
                raise RuntimeError(f"{method} sent {type(opened).__name__} before StreamOpened")
        except BaseException:
            stream.cancel()
            raise
        return opened, stream


_BUSY_PREFIX = "busy: "


async def _answer_of(stream: DeploymentResponseGenerator, method: str) -> ReplicaAnswer:
    try:
        async for item in stream:
            if isinstance(item, ReplicaAnswer):
                return item
    finally:
        stream.cancel()  # no-op after the end; stops the replica's work if this caller was cancelled
    raise RuntimeError(f"{method} ended without an answer")


async def _next(stream: DeploymentResponseGenerator, timeout_s: float, outcome: Outcome, what: str) -> Any:
    try:
        return await asyncio.wait_for(stream.__anext__(), timeout=timeout_s)
    except asyncio.TimeoutError:
        raise _PhaseTimeout(outcome, f"{what} {timeout_s:g} s") from None


def remote_cause(error: BaseException) -> BaseException:
    """The exception a replica raised, without the remote traceback Ray wraps it in."""
    return error.cause if isinstance(error, RayTaskError) else error


def _describe(error: BaseException) -> str:
    if isinstance(error, _PhaseTimeout):
        return str(error)
    cause = remote_cause(error)
    return f"{type(cause).__name__}: {cause}"


__all__ = ["CircuitBreaker", "GroupRouter", "GroupTimeouts", "NoGroupAvailableError", "Outcome", "classify"]
