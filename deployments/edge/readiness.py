"""What every replica group says of itself, and readiness from it: read for ``/readyz``, ``/health`` and
``/v1/memory``, at most once per ``ingress.readiness_cache_s`` for the first two (callers meanwhile share one read).

A group that scales to zero (the floor replicas, a GPU group at ``min_replicas: 0``) with no replica running is idle,
not down; a group with no replica running otherwise says why (Serve's message: unschedulable, starting, restarting).
"""

import asyncio
import time
from typing import Any, Callable

from ray.serve.exceptions import DeploymentUnavailableError, RayServeException
from ray.serve.handle import DeploymentHandle

from deployments.routing.group_watch import GroupWatch
from deployments.routing.router import GroupRouter

REASON_CHARS = 300  # a dead replica's error carries its whole traceback
DESCRIBE_TIMEOUT_S = 10.0  # what the edge waits for a replica's describe, or for the job runner


class Readiness:
    def __init__(
        self,
        groups: dict[str, DeploymentHandle],
        router: GroupRouter,
        watch: GroupWatch,
        *,
        idle_at_zero: set[str],
        cache_s: float,
        fallbacks: Callable[[], int],
    ) -> None:
        self._groups = groups
        self._router = router
        self._watch = watch
        self._idle_at_zero = idle_at_zero
        self._cache_s = cache_s
        self._fallbacks = fallbacks
        self._read: tuple[float, dict[str, Any], bool] | None = None  # (read at, body, serving)
        self._lock = asyncio.Lock()

    async def cached(self) -> tuple[float, dict[str, Any], bool]:
        """The last read while it is younger than ``ingress.readiness_cache_s``; callers meanwhile share one read."""
        async with self._lock:
            cached = self._read
            if cached is None or time.time() - cached[0] >= self._cache_s:
                body, serving = await self.read()
                self._read = cached = (time.time(), body, serving)
        return cached

    async def read(self) -> tuple[dict[str, Any], bool]:
        """The body ``/readyz`` answers, and whether some group can serve."""
        groups = await self.describe_groups()
        summary = {}
        for name, replicas in groups.items():
            ready = sum(1 for replica in replicas if replica.get("serving"))
            if name in self._idle_at_zero and not replicas:
                status = "idle"  # scaled to zero: the floor starts when the GPU group is busy, a GPU group on a call
            else:
                status = "up" if replicas and ready == len(replicas) else ("degraded" if ready else "down")
            summary[name] = {
                "ready_replicas": ready,
                "replicas": len(replicas),
                "status": status,
                "reasons": sorted({replica.get("reason", "") for replica in replicas if not replica.get("serving")}),
            }
        any_up = any(group["ready_replicas"] for group in summary.values())
        all_up = all(group["status"] in ("up", "idle") for group in summary.values())
        status = "ready" if all_up else ("degraded" if any_up else "unavailable")
        body = {
            "status": status, "groups": summary, "gpu_breaker": self._router.breaker.state,
            "breakers": self._router.breaker_states(), "fallbacks": self._fallbacks(),
        }
        return body, any_up

    async def describe_groups(self) -> dict[str, list[dict[str, Any]]]:
        """Every replica's ``describe``, by group; a replica that does not answer, or a group with none running,
        is an entry with its state and reason."""
        await self._watch.fresh()  # which groups have replicas running, and Serve's word on those that do not

        async def describe(name: str, handle: DeploymentHandle) -> tuple[str, list[dict[str, Any]]]:
            try:
                results = await handle.broadcast("describe").results_async(
                    timeout_s=DESCRIBE_TIMEOUT_S, return_exceptions=True
                )
            except TimeoutError:
                return name, [{"replica": None, "state": "unreachable", "reason": f"no answer within {DESCRIBE_TIMEOUT_S:g} s"}]
            except (DeploymentUnavailableError, RayServeException) as error:
                if name in self._idle_at_zero and self._router.running_replicas(name) == 0:
                    return name, []  # scaled to zero (the floor whenever the GPU group is not busy)
                # No replica running: unschedulable (no GPU node), starting, or restarting.
                reason = self._watch.messages.get(name) or str(error)
                return name, [{"replica": None, "state": "not_running", "reason": reason}]
            described = []
            for result in results:
                if isinstance(result, BaseException):
                    reason = f"{type(result).__name__}: {result}"[:REASON_CHARS]
                    described.append({"replica": None, "state": "unreachable", "reason": reason})
                else:
                    described.append(result)
            return name, described

        pairs = await asyncio.gather(*(describe(name, handle) for name, handle in self._groups.items()))
        return dict(pairs)
