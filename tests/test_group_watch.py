"""GroupWatch's rules with a stand-in for ``serve.status`` (pure routing logic, no cluster): what a router is told,
and when a call waits for a read. Through real Serve, the first job on the default
config (tests/integration/test_bin_serve.py) and the unschedulable GPU group's reason
(tests/integration/test_replica_groups.py) use it."""

import asyncio
import dataclasses

import pytest
from test_circuit_breaker import Clock

from deployments.routing.group_watch import STALE_S, WATCH_PERIOD_S, GroupWatch

pytestmark = pytest.mark.unit


@dataclasses.dataclass
class Deployment:
    replica_states: dict[str, int]
    message: str = ""


class Status:
    """``serve.status()``'s shape, as far as the watch reads it; ``fail`` makes the next read raise."""

    def __init__(self, **deployments: Deployment) -> None:
        self.deployments = deployments
        self.fail = False

    def __call__(self):
        if self.fail:
            raise ConnectionError("the controller is restarting")
        app = type("App", (), {"deployments": self.deployments})()
        return type("Status", (), {"applications": {"app": app}})()


def _watch(status: Status, clock: Clock, told: dict) -> GroupWatch:
    return GroupWatch("app", ["gpu", "gpu_floor"], told.__setitem__, clock=clock, read_status=status)


def test_the_router_is_told_each_groups_running_replicas_and_serves_word_on_them():
    status = Status(gpu_group=Deployment({"PENDING_ALLOCATION": 1}, "Deployment is waiting for resources: GPU 0.5"))
    told: dict = {}
    watch = _watch(status, Clock(), told)

    asyncio.run(watch.fresh())

    assert told == {"gpu": 0, "gpu_floor": 0}  # the floor deployment absent: none running
    assert watch.messages["gpu"] == "replicas: PENDING_ALLOCATION 1. Deployment is waiting for resources: GPU 0.5"


def test_a_failed_read_leaves_every_group_unknown():
    status = Status(gpu_group=Deployment({"RUNNING": 2}))
    told: dict = {}
    clock = Clock()
    watch = _watch(status, clock, told)
    asyncio.run(watch.fresh())
    assert told["gpu"] == 2

    status.fail = True
    clock.advance(WATCH_PERIOD_S)
    asyncio.run(watch.fresh())

    assert told == {"gpu": None, "gpu_floor": None}


def test_fresh_reads_at_most_once_a_period_and_calls_at_one_moment_share_a_read():
    status = Status(gpu_group=Deployment({"RUNNING": 1}))
    clock = Clock()
    watch = _watch(status, clock, {})

    async def many() -> None:
        await asyncio.gather(*(watch.fresh() for _ in range(5)))

    asyncio.run(many())
    assert watch.reads == 1
    clock.advance(WATCH_PERIOD_S / 2)
    asyncio.run(watch.fresh())
    assert watch.reads == 1
    clock.advance(WATCH_PERIOD_S)
    asyncio.run(watch.fresh())
    assert watch.reads == 2


@pytest.mark.parametrize("age_s, waits", [(WATCH_PERIOD_S + 0.5, False), (STALE_S + 0.5, True)])
def test_recent_waits_for_a_read_only_when_the_view_is_stale(age_s, waits):
    status = Status(gpu_group=Deployment({"RUNNING": 1}))
    clock = Clock()
    told: dict = {}
    watch = _watch(status, clock, told)
    asyncio.run(watch.recent())  # no view yet: waits
    assert (watch.reads, told["gpu"]) == (1, 1)

    status.deployments["gpu_group"] = Deployment({"RUNNING": 0, "STARTING": 1})
    clock.advance(age_s)

    async def call_then_look() -> int | None:
        await watch.recent()
        seen = told["gpu"]  # what this call's routing sees
        await asyncio.sleep(0.05)  # the background read, if one was started, lands
        return seen

    seen = asyncio.run(call_then_look())

    assert watch.reads == 2
    assert seen == (0 if waits else 1)
    assert told["gpu"] == 0

