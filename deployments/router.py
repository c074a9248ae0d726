"""Which replica group answers: the GPU group while it can, else the CPU group.

A call goes to the GPU group first and falls back to the CPU group when the
GPU group is unavailable (``DeploymentUnavailableError``, a replica still
loading or waiting for memory), too slow (a replica that can never be
scheduled queues calls forever, so every GPU call has a timeout), pushing
back (``BackPressureError``), or out of memory on the request. A circuit
breaker then sends traffic straight to the CPU group for ``cooldown_s``
instead of paying the timeout on every request, and lets one call probe the
GPU group after that.
"""

import asyncio
import dataclasses
import logging
import time
from typing import Any, Awaitable, Callable

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from deployments.model_replica import CPU_GROUP, GPU_GROUP, ReplicaUnavailableError, RequestOutOfMemoryError

logger = logging.getLogger(__name__)

FALLBACK_ERRORS = (
    RayActorError,  # the replica died mid-call (killed, node lost)
    DeploymentUnavailableError,
    BackPressureError,
    ReplicaUnavailableError,
    RequestOutOfMemoryError,
    asyncio.TimeoutError,
)


class NoGroupAvailableError(RuntimeError):
    """Neither group could take the request; the message says why for each."""


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


class GroupRouter:
    """Sends each call to the GPU group or the CPU group; counts what it did."""

    def __init__(
        self,
        gpu_group: DeploymentHandle | None,
        cpu_group: DeploymentHandle | None,
        *,
        gpu_timeout_s: float,
        breaker: CircuitBreaker,
        on_fallback: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self._gpu = gpu_group
        self._cpu = cpu_group
        self._gpu_timeout_s = gpu_timeout_s
        self.breaker = breaker
        self._on_fallback = on_fallback
        # Updated from Serve's status by the ingress: with no running GPU replica (none scheduled,
        # all restarting) a call would only queue until the timeout, so skip the GPU group at once.
        self.gpu_running_replicas: int | None = None

    async def call(self, method: str, *args: Any) -> Any:
        """One call of ``method``; its result."""

        async def unary(handle: DeploymentHandle, timeout_s: float | None) -> Any:
            response = handle.options(method_name=method).remote(*args)
            if timeout_s is None:
                return await response
            try:
                return await asyncio.wait_for(response, timeout=timeout_s)
            except asyncio.TimeoutError:
                response.cancel()
                raise

        return await self._route(unary)

    async def open_stream(self, method: str, *args: Any) -> tuple[Any, DeploymentResponseGenerator]:
        """Start the streaming ``method``; its first item and the rest of the stream.

        A group is chosen the same way as for :meth:`call`, up to the first item: an error before it
        (unavailable, out of memory, too slow) moves the stream to the other group; after it, the
        stream stays where it is.
        """

        async def first_item(handle: DeploymentHandle, timeout_s: float | None) -> tuple[Any, DeploymentResponseGenerator]:
            stream = handle.options(method_name=method, stream=True).remote(*args)
            try:
                if timeout_s is None:
                    first = await stream.__anext__()
                else:
                    first = await asyncio.wait_for(stream.__anext__(), timeout=timeout_s)
            except BaseException:
                stream.cancel()
                raise
            return first, stream

        return await self._route(first_item)

    async def _route(self, invoke: Callable[[DeploymentHandle, float | None], Awaitable[Any]]) -> Any:
        gpu_reason = "the GPU group is disabled"
        if self._gpu is not None:
            if self.gpu_running_replicas == 0:
                gpu_reason = "no GPU-group replica is running (unschedulable, starting or restarting)"
            elif self.breaker.allows():
                try:
                    result = await invoke(self._gpu, self._gpu_timeout_s)
                except FALLBACK_ERRORS as error:
                    gpu_reason = _describe(error, self._gpu_timeout_s)
                    if _is_request_out_of_memory(error):
                        # The request was too big for the GPU replica even at the floor: the group itself is fine.
                        logger.warning("GPU group out of memory on one request; the CPU group takes it (%s)", gpu_reason)
                    else:
                        self.breaker.record_failure(gpu_reason)
                else:
                    self.breaker.record_success()
                    return result
            else:
                gpu_reason = f"circuit breaker open after: {self.breaker.last_reason}"
        if self._cpu is None:
            raise NoGroupAvailableError(f"GPU group: {gpu_reason}; the CPU group is disabled")
        self._on_fallback(gpu_reason)
        try:
            return await invoke(self._cpu, None)
        except FALLBACK_ERRORS as error:
            raise NoGroupAvailableError(f"GPU group: {gpu_reason}; CPU group: {_describe(error, None)}") from error


def _is_request_out_of_memory(error: BaseException) -> bool:
    return isinstance(remote_cause(error), RequestOutOfMemoryError)


def remote_cause(error: BaseException) -> BaseException:
    """The exception a replica raised, without the remote traceback Ray wraps it in."""
    return error.cause if isinstance(error, RayTaskError) else error


def _describe(error: BaseException, timeout_s: float | None) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return f"no answer within {timeout_s:g} s (a replica may be unschedulable or stuck)"
    cause = remote_cause(error)
    return f"{type(cause).__name__}: {cause}"


__all__ = ["CircuitBreaker", "GroupRouter", "NoGroupAvailableError", "GPU_GROUP", "CPU_GROUP"]
