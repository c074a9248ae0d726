"""The circuit breaker the group router keeps per GPU group: a broken group is skipped, then probed.

A group's own faults (unreachable, unavailable, dead mid-call) open it; a request's own faults never do
(:func:`deployments.routing.router.classify`). While open, calls go to the next group; after
``cooldown_s`` the router probes the group in the background (:meth:`ModelReplica.ping`), never with a
client's call, and the first answer closes it.
"""

import dataclasses
import logging
import time
from typing import Callable

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class CircuitBreaker:
    """Closed: calls go through. Open: skipped until ``cooldown_s`` has passed, then one probe (the router's
    :meth:`ModelReplica.ping`, in the background) at a time, until one answers."""

    cooldown_s: float
    clock: Callable[[], float] = time.monotonic
    opened_at: float | None = None
    last_reason: str | None = None
    probing: bool = False
    on_change: Callable[["CircuitBreaker"], None] | None = None  # told after it opens, fails again, or closes

    def allows(self) -> bool:
        if self.opened_at is None:
            return True
        if self.probing or self.clock() - self.opened_at < self.cooldown_s:
            return False
        self.probing = True  # one probe at a time
        return True

    def record_success(self) -> None:
        was_open = self.opened_at is not None
        if was_open:
            logger.info("The group answered again; closing its circuit breaker")
        self.opened_at, self.last_reason, self.probing = None, None, False
        if was_open and self.on_change is not None:
            self.on_change(self)

    def record_failure(self, reason: str) -> None:
        if self.opened_at is None:
            logger.warning("Group unavailable (%s); the next group takes its traffic for %.0f s", reason, self.cooldown_s)
        self.opened_at, self.last_reason, self.probing = self.clock(), reason, False
        if self.on_change is not None:
            self.on_change(self)

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.cooldown_s else "open"
