"""What Serve says of the GPU groups' replicas, told to a router, so that no caller waits on a group with none running.

A GPU group whose replica cannot be scheduled (no GPU node), or is starting or restarting, queues a call until the
router's reach timeout (``routing.gpu_timeout_s``, 30 s), then its breaker opens for ``routing.breaker_cooldown_s``
and the next call after it waits again. Serve's own status already says that no replica is running: a router told so
skips the group at once (:meth:`GroupRouter.set_running_replicas`). With the status come the breakers the app's other
routers opened (:mod:`deployments.routing.shared_breaker`): a group another router found broken is skipped for the rest
of that cooldown, not paid for again.

Every router is told, and only while it has calls to route, so that an idle app asks Serve's controller nothing:

- the job runner's, before each call (:meth:`GroupWatch.fresh`): a read at most once a period;
- the ingress's, before each client's call (:meth:`GroupWatch.recent`): a view older than a period is read again in
  the background, and only one older than :data:`STALE_S` (the first call after a quiet spell) waits for the read,
  which takes milliseconds. Its readiness and memory view wait for a view at most a period old.

Both also ready their handles as their replica starts (:meth:`GroupWatch.warm_up`): a handle's first call waits until
Serve's controller has told it the group's replicas, and a ping to each group that runs pays that before any client.
"""

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from ray import serve

from deployments.routing.groups import DEPLOYMENT_NAMES
from deployments.routing.shared_breaker import SharedBreakers

if TYPE_CHECKING:
    from deployments.config.app_config import AppConfig
    from deployments.routing.router import GroupRouter

logger = logging.getLogger(__name__)

WATCH_PERIOD_S = 2.0
STALE_S = 10.0


def cpu_group_always_runs(config: "AppConfig") -> bool:
    """Whether the CPU group keeps a replica at all times (so a warm-up call wakes nothing)."""
    return config.cpu_group.enabled and config.cpu_group.autoscaling.min_replicas > 0


class GroupWatch:
    """Reads Serve's status of ``groups`` in application ``app_name`` and tells ``set_running`` (a router's
    :meth:`~deployments.routing.router.GroupRouter.set_running_replicas`) how many replicas of each run."""

    def __init__(
        self,
        app_name: str,
        groups: list[str],
        set_running: Callable[[str, int | None], None],
        *,
        period_s: float = WATCH_PERIOD_S,
        clock: Callable[[], float] = time.monotonic,
        read_status: Callable[[], Any] = serve.status,
        shared_breakers: SharedBreakers | None = None,
        adopt_breakers: Callable[[dict[str, dict[str, Any] | None]], None] = lambda openings: None,
    ) -> None:
        self._app_name = app_name
        self._groups = list(groups)
        self._set_running = set_running
        self._period_s = period_s
        self._clock = clock
        self._read_status = read_status
        self._shared = shared_breakers
        self._adopt_breakers = adopt_breakers
        self.reads = 0  # reads of Serve's status so far
        self._read_at: float | None = None
        self._reading: asyncio.Task | None = None
        self.messages: dict[str, str] = {}  # per group: its replicas' states and Serve's message

    @classmethod
    def for_router(cls, app_name: str, router: "GroupRouter", **options: Any) -> "GroupWatch":
        """The watch of ``router``'s GPU groups in ``app_name``, telling it their running replicas and the breakers the
        app's other routers opened (through the router's own :class:`SharedBreakers`); ``options``: ``period_s``,
        ``clock``, ``read_status``."""
        return cls(app_name, router.gpu_groups, router.set_running_replicas, shared_breakers=router.shared_breakers,
                   adopt_breakers=router.adopt_shared_breakers, **options)

    async def read(self) -> None:
        """One read of Serve's status (and of the breakers the app's other routers opened); a failed read leaves every
        group unknown (``None``), which the router tries."""
        try:
            self.reads += 1
            status, openings = await asyncio.to_thread(self._read_both)
            if openings is not None:
                self._adopt_breakers(openings)
            deployments = status.applications[self._app_name].deployments
            for group in self._groups:
                deployment = deployments.get(DEPLOYMENT_NAMES[group])
                self._set_running(group, deployment.replica_states.get("RUNNING", 0) if deployment else 0)
                if deployment:
                    states = ", ".join(f"{getattr(state, 'value', state)} {n}" for state, n in deployment.replica_states.items())
                    self.messages[group] = f"replicas: {states or 'none'}. {deployment.message}".strip()
        except Exception as error:  # noqa: BLE001 - a controller hiccup: the groups are unknown until the next read
            logger.warning("Reading Serve status failed: %s", error)
            for group in self._groups:
                self._set_running(group, None)
        finally:
            self._read_at = self._clock()

    async def warm_up(self, router: "GroupRouter", cpu_group_always_runs: bool) -> None:
        """Read Serve's status, then ready the router's handles (:meth:`GroupRouter.warm_up`), in the background of a
        replica's start, so that the first client's call or job pays neither."""
        try:
            await self.fresh()
            warmed = await router.warm_up(cpu_group_always_runs=cpu_group_always_runs)
            logger.info("Handles ready for %s", ", ".join(warmed) or "no group")
        except Exception as error:  # noqa: BLE001 - the first call then pays what this would have
            logger.warning("Readying the groups' handles failed: %s", error)

    def _read_both(self) -> tuple[Any, dict[str, dict[str, Any] | None] | None]:
        openings = self._shared.read(self._groups) if self._shared is not None else None
        return self._read_status(), openings

    async def fresh(self) -> None:
        """Return once the router has been told what Serve said at most one period ago; callers at the same moment
        share one read."""
        age_s = self._age_s()
        if not self._groups or (age_s is not None and age_s < self._period_s):
            return
        await asyncio.shield(self._start_read())

    async def recent(self) -> None:
        """For a client's call: a view at most a period old is used as it is; an older one is read again in the
        background, and waited for only when it is older than :data:`STALE_S` or there is none yet."""
        age_s = self._age_s()
        if not self._groups or (age_s is not None and age_s < self._period_s):
            return
        reading = self._start_read()
        if age_s is None or age_s >= STALE_S:
            await asyncio.shield(reading)

    def _age_s(self) -> float | None:
        return None if self._read_at is None else self._clock() - self._read_at

    def _start_read(self) -> asyncio.Task:
        if self._reading is None or self._reading.done():
            self._reading = asyncio.get_running_loop().create_task(self.read(), name="group-watch")
        return self._reading
