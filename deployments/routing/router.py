"""Which replica group answers, telling a busy group from a broken one.

Every call is a stream from the replica (:mod:`deployments.replica.protocol`), timed in two phases,
never on its whole length:

1. **reach**: Serve places the call on a replica that takes it (the replica's answer to Serve's
   ``max_ongoing_requests`` check) within ``reach_timeout_s``. A group that does not (a replica that can
   never be scheduled queues calls forever), is unavailable
   (``DeploymentUnavailableError``, a replica still loading or waiting for memory) or dies mid-call is
   **broken**: the call goes to the next group and the group's circuit breaker opens.
2. **admission**: the replica admits the request and yields :class:`StreamOpened` (its first token
   exists) within ``admission_timeout_s``. A group whose queues are full (``BackPressureError`` from
   Serve's ``max_queued_requests``, :class:`ReplicaBusyError` from the replica), that does not admit in
   time, or that cannot fit the request (:class:`RequestOutOfMemoryError`) is **busy**: the call is
   cancelled there and goes to the next group, and the breaker stays closed.

The order is the GPU group, the GPU floor replicas (when configured; woken only when the GPU group is
busy, so that under load more replicas at a lower precision take the overflow instead of a queue), then
the CPU group. An open breaker is probed in the background, never with a client's call.

After admission a call runs to its end where it started, however long: a long answer from a healthy
replica is never abandoned. A call that is abandoned (a timeout, the client gone) is cancelled on the
replica, which takes it out of its batch.

The breaker settles every outcome in ``finally``: a request's own fault (a 4xx, an out-of-memory of
that request, a client that left) counts as the group being healthy; only the group's faults open it.
"""

import asyncio
import dataclasses
import enum
import functools
import logging
import time
from typing import Any, Callable, Mapping

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from deployments.config.app_config import AppConfig
from deployments.replica.protocol import ReplicaAnswer, ReplicaUnavailableError, StreamOpened
from deployments.routing.breaker import CircuitBreaker
from deployments.routing.groups import CPU_GROUP, GPU_FLOOR_GROUP, GPU_GROUP, GPU_GROUPS, ROUTING_ORDER
from deployments.routing.shared_breaker import SharedBreakers
from models.errors import ReplicaBusyError, RequestOutOfMemoryError, SchedulerClosedError

logger = logging.getLogger(__name__)

BROKEN_ERRORS = (RayActorError, DeploymentUnavailableError, ReplicaUnavailableError, SchedulerClosedError)
BUSY_ERRORS = (BackPressureError, ReplicaBusyError, RequestOutOfMemoryError)


class NoGroupAvailableError(RuntimeError):
    """No group could take the request; the message says why for each."""

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


@dataclasses.dataclass(frozen=True)
class GroupTimeouts:
    reach_s: float
    admission_s: float


@dataclasses.dataclass
class _Tier:
    """One group in the routing order, and what the router knows of it."""

    group: str
    handle: DeploymentHandle
    timeouts: GroupTimeouts
    breaker: CircuitBreaker | None  # the GPU groups'; the CPU group is the last resort and has none
    running_replicas: int | None = None  # from Serve's status (the ingress's watch); None: not known
    scales_from_zero: bool = False  # min_replicas 0: woken by a ping, not by a client's call
    wakes_on_overflow: bool = False  # the floor replicas: woken only when the GPU group is busy; others by any call
    awake: bool = False  # a replica answered a wake ping since the group last had none running
    waking: asyncio.Task | None = None
    probing: asyncio.Task | None = None


_LABELS = {GPU_GROUP: "GPU group", GPU_FLOOR_GROUP: "GPU floor replicas", CPU_GROUP: "CPU group"}


class GroupRouter:
    """Sends each call to the first group, in :data:`~deployments.routing.groups.ROUTING_ORDER`, that admits it.

    The GPU group first; when it is busy or broken, the GPU floor replicas (``gpu_floor``: more replicas a
    card at ``min_precision``, started from zero by the first call that would use them); then the CPU group.
    A GPU group with ``min_replicas: 0`` and no replica running is asleep, not broken: a call wakes it with a
    ping (Serve's autoscaler starts a replica for it) and goes on to the next group until the replica has loaded.
    A GPU group whose breaker is open is skipped, and probed in the background by :meth:`ModelReplica.ping`
    once the cooldown has passed: no client's call waits on a group that may still be broken.
    """

    def __init__(
        self,
        gpu_group: DeploymentHandle | None,
        cpu_group: DeploymentHandle | None,
        *,
        gpu_timeouts: GroupTimeouts,
        cpu_timeouts: GroupTimeouts,
        breaker: CircuitBreaker,
        on_fallback: Callable[[str], None] = lambda reason: None,
        gpu_floor_group: DeploymentHandle | None = None,
        on_spill: Callable[[str], None] = lambda reason: None,
        wake_timeout_s: float = 600.0,
        gpu_scales_to_zero: bool = False,
        shared_breakers: SharedBreakers | None = None,
    ) -> None:
        self.breaker = breaker
        self._tiers: dict[str, _Tier] = {}
        if gpu_group is not None:
            self._tiers[GPU_GROUP] = _Tier(GPU_GROUP, gpu_group, gpu_timeouts, breaker, scales_from_zero=gpu_scales_to_zero)
        if gpu_floor_group is not None:
            self._tiers[GPU_FLOOR_GROUP] = _Tier(
                GPU_FLOOR_GROUP, gpu_floor_group, gpu_timeouts, CircuitBreaker(cooldown_s=breaker.cooldown_s, clock=breaker.clock),
                scales_from_zero=True, wakes_on_overflow=True,
            )
        if cpu_group is not None:
            self._tiers[CPU_GROUP] = _Tier(CPU_GROUP, cpu_group, cpu_timeouts, None)
        self._on_fallback = on_fallback
        self._on_spill = on_spill
        self._wake_timeout_s = wake_timeout_s
        self._shared = shared_breakers
        if shared_breakers is not None:
            for tier in self._tiers.values():
                if tier.breaker is not None:
                    tier.breaker.on_change = functools.partial(self._share_breaker, tier.group)

    # -- what the ingress tells the router ------------------------------------------------------

    def set_running_replicas(self, group: str, running: int | None) -> None:
        """Serve's count of a group's running replicas (``None``: unknown). With none running (none scheduled,
        all restarting, or scaled to zero) a call would only queue until the timeout, so the group is skipped."""
        tier = self._tiers.get(group)
        if tier is None:
            return
        tier.running_replicas = running
        if running == 0:
            tier.awake = False

    def is_awake(self, group: str) -> bool:
        """Whether a group that starts from zero (the floor replicas, a GPU group with ``min_replicas: 0``) has
        answered a wake ping since it last had none running; groups that do not scale from zero are always awake."""
        tier = self._tiers.get(group)
        return tier is not None and (tier.awake or not tier.scales_from_zero)

    def running_replicas(self, group: str) -> int | None:
        tier = self._tiers.get(group)
        return tier.running_replicas if tier else None

    def adopt_shared_breakers(self, openings: dict[str, dict[str, Any] | None]) -> None:
        """What the app's other routers found (:class:`~deployments.routing.shared_breaker.SharedBreakers`): open a
        breaker for the rest of another router's opening, close one once that opening is gone."""
        if self._shared is None:
            return
        for group, opening in openings.items():
            tier = self._tiers.get(group)
            if tier is not None and tier.breaker is not None:
                self._shared.adopt(tier.breaker, opening)

    def _share_breaker(self, group: str, breaker: CircuitBreaker) -> None:
        assert self._shared is not None
        opening = self._shared.opening_of(breaker)
        try:
            asyncio.get_running_loop().run_in_executor(None, self._shared.tell, group, opening)
        except RuntimeError:  # no loop running (a unit test's synchronous call)
            self._shared.tell(group, opening)

    @property
    def gpu_groups(self) -> list[str]:
        """The GPU groups this router sends calls to (the GPU group, the floor replicas), in routing order."""
        return [group for group in self._tiers if group in GPU_GROUPS]

    @property
    def shared_breakers(self) -> SharedBreakers | None:
        return self._shared

    def breaker_states(self) -> dict[str, str]:
        return {group: tier.breaker.state for group, tier in self._tiers.items() if tier.breaker is not None}

    # -- calls ------------------------------------------------------------------------------------

    async def call(
        self, method: str, *args: Any, on_opened: Callable[[StreamOpened], None] = lambda opened: None
    ) -> ReplicaAnswer:
        """The whole answer of the streaming ``method`` (asked for without its text pieces); ``on_opened`` is
        told which replica admitted it (the job runner counts running segments per group so).

        Nothing has reached the client yet, so a GPU replica that dies (or is unloaded) after it
        admitted the call is a broken group like any other: its breaker opens and the CPU group
        answers the call from the start.
        """
        opened, stream = await self.open_stream(method, *args, stream_text=False)
        on_opened(opened)
        try:
            return await _answer_of(stream, method)
        except BaseException as error:
            tier = self._tiers.get(opened.served_by.group)
            cpu = self._tiers.get(CPU_GROUP)
            if tier is None or tier.breaker is None or cpu is None or classify(error) is not Outcome.BROKEN:
                raise
            reason = f"replica {opened.served_by.replica} ended mid-call: {_describe(error)}"
        tier.breaker.record_failure(reason)
        logger.warning("%s broke during a call (%s); the CPU group answers it from the start", _LABELS[tier.group], reason)
        self._on_fallback(reason)
        _, cpu_reason, reopened = await self._try_group(cpu, method, args, False)
        if reopened is None:
            raise NoGroupAvailableError(f"{_LABELS[tier.group]}: {reason}; CPU group: {cpu_reason}", busy=False)
        on_opened(reopened[0])
        return await _answer_of(reopened[1], method)

    async def open_stream(self, method: str, *args: Any, stream_text: bool = True) -> tuple[StreamOpened, DeploymentResponseGenerator]:
        """Start the streaming ``method`` on the first group that admits it; its :class:`StreamOpened` and the rest."""
        reasons: list[str] = []
        first_gpu_reason: str | None = None
        gpu_outcome = Outcome.BUSY  # a disabled GPU group counts as busy
        all_busy = True  # every group tried or skipped was busy, none broken
        if GPU_GROUP not in self._tiers:
            reasons.append("GPU group: the GPU group is disabled")
            first_gpu_reason = "the GPU group is disabled"
        for group in ROUTING_ORDER:
            tier = self._tiers.get(group)
            if tier is None:
                continue
            if group == CPU_GROUP and first_gpu_reason is not None:
                self._on_fallback(first_gpu_reason)
            outcome, reason = self._skip_reason(tier, gpu_outcome)
            if reason is None:
                outcome, reason, opened = await self._try_group(tier, method, args, stream_text)
                if opened is not None:
                    if group == GPU_FLOOR_GROUP and first_gpu_reason is not None:
                        self._on_spill(first_gpu_reason)
                    return opened
                if outcome is Outcome.BUSY and group != CPU_GROUP:
                    logger.info("%s busy (%s); the next group takes the call", _LABELS[group], reason)
            reasons.append(f"{_LABELS[group]}: {reason}")
            if outcome is not None:
                all_busy = all_busy and outcome is Outcome.BUSY
            if group == GPU_GROUP:
                first_gpu_reason, gpu_outcome = reason, outcome
        if CPU_GROUP not in self._tiers:
            reasons.append("the CPU group is disabled")
        raise NoGroupAvailableError("; ".join(reasons), busy=all_busy)

    def _skip_reason(self, tier: _Tier, gpu_outcome: Outcome | None) -> tuple[Outcome | None, str | None]:
        """Why this call does not try ``tier``, and whether that is busy, broken or neither (``None``);
        a ``None`` reason: try it."""
        if tier.scales_from_zero and not tier.awake:
            if not tier.wakes_on_overflow:  # asleep, not broken: woken by this call, answered by the next group
                self._wake(tier)
                return None, "asleep (min_replicas: 0); this call wakes it, and calls come here once a replica has loaded"
            if gpu_outcome is not Outcome.BUSY:
                return None, "asleep; they start when the GPU group is busy, not when it is broken"
            self._wake(tier)
            return Outcome.BUSY, "starting (from zero or a restart); calls come here once a floor replica is loaded"
        if tier.running_replicas == 0:
            return Outcome.BROKEN, f"no {_LABELS[tier.group]} replica is running (unschedulable, starting or restarting)"
        breaker = tier.breaker
        if breaker is not None and breaker.opened_at is not None:
            if breaker.allows():  # past the cooldown: probe in the background, not with this call
                self._probe(tier)
            return Outcome.BROKEN, f"circuit breaker open after: {breaker.last_reason}"
        return Outcome.SERVED, None

    async def warm_up(self, *, cpu_group_always_runs: bool) -> list[str]:
        """Make each group's handle ready before the first client's call: a handle's first call waits until Serve's
        controller has told it the group's replicas (seconds while the app starts), so one ``ping`` to each group that
        has replicas running pays that here. A group that scales from zero is left asleep, and a group with none
        running (unschedulable, or asleep) is not called. Returns the groups pinged; their answers do not matter."""
        groups = [
            tier.group for tier in self._tiers.values()
            if ((tier.running_replicas or 0) > 0 and not tier.scales_from_zero)
            or (tier.group == CPU_GROUP and cpu_group_always_runs)
        ]

        async def ping(group: str) -> None:
            try:
                await _ping(self._tiers[group].handle, timeout_s=self._tiers[group].timeouts.reach_s)
            except asyncio.CancelledError:
                raise
            except BaseException as error:  # noqa: BLE001 - loading, or not yet running: the handle is ready all the same
                logger.debug("Warm-up ping to the %s: %s", _LABELS[group], _describe(error))

        await asyncio.gather(*(ping(group) for group in groups))
        return groups

    # -- background calls: breaker probes, waking the floor replicas ------------------------------

    def _probe(self, tier: _Tier) -> None:
        # One at a time: the breaker allows no other probe until this one settles it. The task is kept so
        # that it is not collected while it runs.
        tier.probing = asyncio.get_running_loop().create_task(self._run_probe(tier), name=f"probe-{tier.group}")

    async def _run_probe(self, tier: _Tier) -> None:
        """One :meth:`ModelReplica.ping` within the reach timeout: an answer closes the breaker, anything else
        opens it for another cooldown."""
        assert tier.breaker is not None
        try:
            await _ping(tier.handle, timeout_s=tier.timeouts.reach_s)
        except asyncio.CancelledError:
            tier.breaker.probing = False
            raise
        except BaseException as error:  # noqa: BLE001 - every failure of the probe is the group's
            tier.breaker.record_failure(f"probe: {_describe(error)}")
            return
        tier.breaker.record_success()

    def _wake(self, tier: _Tier) -> None:
        if tier.waking is not None and not tier.waking.done():
            return
        tier.waking = asyncio.get_running_loop().create_task(self._run_wake(tier), name=f"wake-{tier.group}")

    async def _run_wake(self, tier: _Tier) -> None:
        """A ping that Serve queues until a replica runs (its autoscaler starts one for it), answered once the
        replica has loaded. Until then calls go past the group."""
        logger.info("Waking the %s: %s", _LABELS[tier.group],
                    "the GPU group is busy" if tier.wakes_on_overflow else "a call came while it had no replica")
        started = time.monotonic()
        try:
            answer = await _ping(tier.handle, timeout_s=self._wake_timeout_s, wait_ready_s=self._wake_timeout_s)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: BLE001 - the next call that would use the group wakes it again
            logger.warning("Waking the %s failed after %.1f s: %s", _LABELS[tier.group], time.monotonic() - started,
                           _describe(error))
            return
        tier.awake = True
        if tier.breaker is not None:
            tier.breaker.record_success()
        logger.info("The %s are awake after %.1f s (%s)", _LABELS[tier.group], time.monotonic() - started, answer)

    async def _try_group(
        self, tier: _Tier, method: str, args: tuple, stream_text: bool
    ) -> tuple[Outcome, str, tuple[StreamOpened, DeploymentResponseGenerator] | None]:
        """Open the stream on one group; settles its breaker (a GPU group) whatever happens."""
        outcome, reason = Outcome.SERVED, ""
        try:
            opened = await self._open(tier, method, args, stream_text)
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
            if tier.breaker is not None:
                if outcome is Outcome.BROKEN:
                    tier.breaker.record_failure(reason)
                    if tier.scales_from_zero:
                        tier.awake = False
                else:
                    tier.breaker.record_success()

    async def _open(
        self, tier: _Tier, method: str, args: tuple, stream_text: bool
    ) -> tuple[StreamOpened, DeploymentResponseGenerator]:
        timeouts, group = tier.timeouts, tier.group
        stream = tier.handle.options(method_name=method, stream=True).remote(*args, stream_text=stream_text)
        try:
            await _reach(stream, timeouts.reach_s, f"the {group} group took no call within")
            opened = await _next(stream, timeouts.admission_s, Outcome.BUSY, f"the {group} group admitted nothing within")
            if not isinstance(opened, StreamOpened):
                raise RuntimeError(f"{method} sent {type(opened).__name__} before StreamOpened")
        except BaseException:
            stream.cancel()
            raise
        return opened, stream


def router_for(
    config: AppConfig,
    groups: Mapping[str, DeploymentHandle],
    *,
    on_fallback: Callable[[str], None] = lambda reason: None,
    on_spill: Callable[[str], None] = lambda reason: None,
    shared_breakers: SharedBreakers | None = None,
) -> GroupRouter:
    """The router the config describes over ``groups`` (the running groups' handles by name: the ingress's, and the
    job runner's)."""
    routing = config.routing
    return GroupRouter(
        groups.get(GPU_GROUP),
        groups.get(CPU_GROUP),
        gpu_timeouts=GroupTimeouts(reach_s=routing.gpu_timeout_s, admission_s=routing.admission_timeout_s),
        cpu_timeouts=GroupTimeouts(reach_s=routing.cpu_timeout_s, admission_s=routing.cpu_timeout_s),
        breaker=CircuitBreaker(cooldown_s=routing.breaker_cooldown_s),
        on_fallback=on_fallback,
        gpu_floor_group=groups.get(GPU_FLOOR_GROUP),
        gpu_scales_to_zero=config.gpu_group.autoscaling.min_replicas == 0,
        on_spill=on_spill,
        shared_breakers=shared_breakers,
    )


async def _ping(handle: DeploymentHandle, *, timeout_s: float, wait_ready_s: float = 0.0) -> Any:
    response = handle.options(method_name="ping", stream=False).remote(wait_ready_s=wait_ready_s)
    try:
        return await asyncio.wait_for(response, timeout=timeout_s)
    except BaseException:
        response.cancel()
        raise


_BUSY_PREFIX = "busy: "


async def _answer_of(stream: DeploymentResponseGenerator, method: str) -> ReplicaAnswer:
    try:
        async for item in stream:
            if isinstance(item, ReplicaAnswer):
                return item
    finally:
        stream.cancel()  # no-op after the end; stops the replica's work if this caller was cancelled
    raise RuntimeError(f"{method} ended without an answer")


async def _reach(stream: DeploymentResponseGenerator, timeout_s: float, what: str) -> None:
    """Wait until Serve's router has placed the call on a replica that took it: Serve asks the replica first (its
    ``max_ongoing_requests`` check) and hands the call over only once that replica says yes, so this is the replica
    reached, with no message of our own. ``_to_object_ref_gen`` is Serve's developer API for that moment."""
    try:
        await asyncio.wait_for(stream._to_object_ref_gen(), timeout=timeout_s)
    except asyncio.TimeoutError:
        raise _PhaseTimeout(Outcome.BROKEN, f"{what} {timeout_s:g} s") from None


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


__all__ = ["CircuitBreaker", "GroupRouter", "GroupTimeouts", "NoGroupAvailableError", "Outcome", "classify", "router_for"]
