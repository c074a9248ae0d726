"""A GPU group's circuit breaker, shared by every router of the app through the GCS's key-value store.

Each router (every ingress replica's, the job runner's) keeps its own :class:`~deployments.routing.breaker.CircuitBreaker`.
When one opens it after paying the group's reach timeout (30 s by default), it writes the opening here; the others read
it with Serve's status (:class:`~deployments.routing.group_watch.GroupWatch`, only while they route calls) and open
theirs for the rest of the same cooldown, so no other caller pays that timeout again. When a router's probe finds the
group answering, it deletes the opening, and the others close theirs at their next read. A write or a read that fails
changes nothing: each router still has its own breaker.
"""

import json
import logging
import time
from typing import Any, Callable

from ray.experimental import internal_kv

from deployments.routing.breaker import CircuitBreaker
from deployments.routing.job_backlog import KV_NAMESPACE

logger = logging.getLogger(__name__)

SHARED_PREFIX = "another router found the group broken: "


def _key(app_name: str, group: str) -> str:
    return f"breaker:{app_name}:{group}"


class SharedBreakers:
    """The openings of ``app_name``'s GPU groups' breakers: what this router tells, and what it is told. ``tell`` and
    ``read`` call the GCS (run them in a worker thread); ``adopt`` only moves a breaker (run it on the router's loop)."""

    def __init__(self, app_name: str, *, wall_clock: Callable[[], float] = time.time) -> None:
        self._app_name = app_name
        self._wall_clock = wall_clock

    def opening_of(self, breaker: CircuitBreaker) -> dict[str, Any] | None:
        """What to tell of ``breaker`` now (taken on the router's loop): its own opening, or ``None`` once closed. A
        breaker opened by another router's word is not told again."""
        if breaker.opened_at is None:
            return None
        if (breaker.last_reason or "").startswith(SHARED_PREFIX):
            return {"theirs": True}
        return {"opened_at": self._wall_clock() - (breaker.clock() - breaker.opened_at), "reason": breaker.last_reason}

    def tell(self, group: str, opening: dict[str, Any] | None) -> None:
        key = _key(self._app_name, group)
        try:
            if opening is None:
                internal_kv._internal_kv_del(key, namespace=KV_NAMESPACE)
            elif not opening.get("theirs"):
                internal_kv._internal_kv_put(key, json.dumps(opening).encode(), overwrite=True, namespace=KV_NAMESPACE)
        except Exception as error:  # noqa: BLE001 - the other routers find out for themselves
            logger.warning("Sharing the %s group's breaker failed: %s", group, error)

    def read(self, groups: list[str]) -> dict[str, dict[str, Any] | None] | None:
        """Each group's shared opening (``None``: none); ``None`` when the GCS could not be read."""
        try:
            found = {}
            for group in groups:
                raw = internal_kv._internal_kv_get(_key(self._app_name, group), namespace=KV_NAMESPACE)
                found[group] = json.loads(raw) if raw else None
            return found
        except Exception as error:  # noqa: BLE001 - this router's own breakers still stand
            logger.warning("Reading the shared breakers failed: %s", error)
            return None

    def adopt(self, breaker: CircuitBreaker, opening: dict[str, Any] | None) -> None:
        """Open ``breaker`` for the rest of an opening another router wrote within the cooldown; close it once that
        opening is gone (that router's probe found the group answering). Its own openings it leaves to itself."""
        shared = (breaker.last_reason or "").startswith(SHARED_PREFIX)
        if opening is None:
            if breaker.opened_at is not None and shared:
                breaker.record_success()
            return
        age_s = max(0.0, self._wall_clock() - opening["opened_at"])
        if age_s >= breaker.cooldown_s or (breaker.opened_at is not None and not shared):
            return  # past its cooldown (probed as usual), or this router holds an opening of its own
        if breaker.opened_at is None:
            logger.warning("Another router found the group broken %.1f s ago (%s); the next group takes its traffic "
                           "for the rest of %.0f s", age_s, opening["reason"], breaker.cooldown_s)
        breaker.opened_at, breaker.last_reason, breaker.probing = (
            breaker.clock() - age_s, f"{SHARED_PREFIX}{opening['reason']}", False
        )
