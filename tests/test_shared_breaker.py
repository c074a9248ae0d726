"""One router's breaker, told to the app's other routers through a real GCS (a Ray instance's key-value store): the
routers here are real GroupRouters with stand-ins for Serve's handles (test_group_router.py's), and each reads the
shared openings with its GroupWatch (a stand-in for ``serve.status``)."""

import asyncio
import time

import pytest
from polling import wait_for_condition
from test_circuit_breaker import Clock
from test_group_router import Handle, _script
from test_group_watch import Deployment, Status

from deployments.routing.breaker import CircuitBreaker
from deployments.routing.group_watch import WATCH_PERIOD_S, GroupWatch
from deployments.routing.router import GroupRouter, GroupTimeouts
from deployments.routing.shared_breaker import SHARED_PREFIX, SharedBreakers

pytestmark = pytest.mark.component

COOLDOWN_S = 15.0


def _router(gpu: Handle, cpu: Handle, shared: SharedBreakers, clock: Clock) -> GroupRouter:
    return GroupRouter(
        gpu, cpu,
        gpu_timeouts=GroupTimeouts(reach_s=0.2, admission_s=0.5),
        cpu_timeouts=GroupTimeouts(reach_s=2.0, admission_s=2.0),
        breaker=CircuitBreaker(cooldown_s=COOLDOWN_S, clock=clock),
        shared_breakers=shared,
    )


def _watch(router: GroupRouter, clock: Clock) -> GroupWatch:
    """The watch the ingress and the job runner make for their router (its GPU groups, its shared breakers)."""
    return GroupWatch.for_router("app", router, clock=clock, read_status=Status(gpu_group=Deployment({"RUNNING": 1})))


def _opening(shared: SharedBreakers) -> dict | None:
    return (shared.read(["gpu"]) or {}).get("gpu")


def test_a_group_one_router_found_broken_is_skipped_by_another_until_it_answers_again(local_ray):
    shared = SharedBreakers("shared-breaker-app")
    first_clock, second_clock = Clock(), Clock()
    first = _router(Handle([2.0, *_script("gpu")]), Handle(_script("cpu")), shared, first_clock)  # takes no call
    answer = asyncio.run(first.call("generate_stream", "request"))
    assert answer.served_by.group == "cpu" and first.breaker.state == "open"
    opening = wait_for_condition(lambda: _opening(shared), timeout_s=10)
    assert "took no call within 0.2 s" in opening["reason"] and time.time() - opening["opened_at"] < 10

    second_gpu = Handle(_script("gpu"))
    second = _router(second_gpu, Handle(_script("cpu")), shared, second_clock)
    watch = _watch(second, second_clock)

    async def call_after_the_watch():
        await watch.fresh()
        return await second.call("generate_stream", "request")

    answer = asyncio.run(call_after_the_watch())

    assert answer.served_by.group == "cpu" and second_gpu.streams == []  # never tried: no second 0.2 s paid
    assert second.breaker.state == "open" and second.breaker.last_reason.startswith(SHARED_PREFIX)
    assert COOLDOWN_S - 10 < COOLDOWN_S - (second_clock() - second.breaker.opened_at) <= COOLDOWN_S  # the rest of it
    assert _opening(shared) == opening  # told once, by the router that paid for it

    first.breaker.record_success()  # the first router's probe found the group answering
    wait_for_condition(lambda: _opening(shared) is None, timeout_s=10)
    second_clock.advance(WATCH_PERIOD_S)
    asyncio.run(watch.fresh())

    assert second.breaker.state == "closed"


def test_an_opening_past_its_cooldown_is_not_taken_and_a_routers_own_opening_is_kept(local_ray):
    shared = SharedBreakers("stale-breaker-app")
    old = {"opened_at": time.time() - COOLDOWN_S - 1, "reason": "the gpu group took no call within 30 s"}
    shared.tell("gpu", old)
    closed = CircuitBreaker(cooldown_s=COOLDOWN_S, clock=Clock())

    shared.adopt(closed, _opening(shared))

    assert closed.state == "closed"  # past the cooldown: probed as usual, not skipped again
    own = CircuitBreaker(cooldown_s=COOLDOWN_S, clock=Clock())
    own.record_failure("probe: RayActorError: the actor died")
    fresh = {"opened_at": time.time(), "reason": "the gpu group took no call within 30 s"}

    shared.adopt(own, fresh)

    assert own.last_reason == "probe: RayActorError: the actor died"
