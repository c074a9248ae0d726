import types

import pytest
from polling import wait_for_condition

from deployments.routing.autoscaling import ReplicaReport, desired_replicas

GIB = 1024**3
READY_WITH_ROOM = ReplicaReport(ready=True, free_bytes=30 * GIB, need_bytes=16 * GIB)


def test_scales_out_on_requests_including_queued_ones():
    desired, reason = desired_replicas(current=2, total_requests=9, target_per_replica=2, reports=[READY_WITH_ROOM] * 2)

    assert desired == 5
    assert "9 requests / target 2 -> 5" in reason


def test_does_not_add_a_replica_the_reported_headroom_cannot_hold():
    short = ReplicaReport(ready=True, free_bytes=10 * GIB, need_bytes=16 * GIB)

    desired, reason = desired_replicas(current=2, total_requests=9, target_per_replica=2, reports=[short, short])

    assert desired == 2
    assert "headroom" in reason and str(16 * GIB) in reason


def test_does_not_add_replicas_while_one_is_waiting_for_memory():
    waiting = ReplicaReport(ready=False, free_bytes=30 * GIB, need_bytes=16 * GIB)

    desired, reason = desired_replicas(current=1, total_requests=10, target_per_replica=2, reports=[waiting])

    assert desired == 1
    assert "waiting for memory" in reason


@pytest.mark.parametrize(("requests", "expected"), [(0, 0), (1, 1), (4, 2), (3.5, 2)])
def test_scales_in_freely(requests, expected):
    short = ReplicaReport(ready=False, free_bytes=0, need_bytes=16 * GIB)  # memory gates only scaling out

    desired, _ = desired_replicas(current=3, total_requests=requests, target_per_replica=2, reports=[short] * 3)

    assert desired == expected


class _Config:
    def get_target_ongoing_requests(self) -> float:
        return 1.0


def _context(
    *, running: list[str], ready: dict[str, float | list[float]], requests: float, app_name: str | None = None
) -> object:
    """A small stand-in for Serve's AutoscalingContext: the fields the policy reads. ``ready`` is each replica's
    reports, oldest first (one number: a single report)."""
    series = {replica: values if isinstance(values, list) else [values] for replica, values in ready.items()}

    def timeline(value_of) -> dict[str, list]:
        return {
            replica: [types.SimpleNamespace(timestamp=float(t), value=value_of(v)) for t, v in enumerate(values)]
            for replica, values in series.items()
        }

    raw = {"ready": timeline(float), "free_bytes": timeline(lambda _: float(30 * GIB)), "need_bytes": timeline(lambda _: float(16 * GIB))}
    averaged = {name: {replica: sum(p.value for p in points) / len(points) for replica, points in by_replica.items()}
                for name, by_replica in raw.items()}
    return types.SimpleNamespace(
        raw_metrics=raw,
        aggregated_metrics=averaged,
        running_replicas=running,
        total_num_requests=requests,
        total_queued_requests=0,
        current_num_replicas=len(running),
        config=_Config(),
        app_name=app_name,
        deployment_name="gpu_group",
    )


def test_a_replica_that_has_not_reported_yet_counts_as_loading():
    from deployments.routing.autoscaling import memory_aware_policy

    just_started, _ = memory_aware_policy(_context(running=["a"], ready={}, requests=3))
    one_loaded_one_new, reason = memory_aware_policy(_context(running=["a", "b"], ready={"a": 1.0}, requests=3))
    both_ready, _ = memory_aware_policy(_context(running=["a", "b"], ready={"a": 1.0, "b": 1.0}, requests=3))

    assert just_started == 1 and one_loaded_one_new == 2 and both_ready == 3
    assert "still loading" in reason["reason"]


def test_a_replica_that_has_just_loaded_counts_as_ready_at_once_not_after_half_a_window():
    from deployments.routing.autoscaling import memory_aware_policy

    # Loading for four reports, ready in the last one: the window's average is 0.2, the replica is ready.
    desired, reason = memory_aware_policy(_context(running=["a"], ready={"a": [0, 0, 0, 0, 1]}, requests=3))

    assert desired == 3, reason


def test_a_job_backlog_counts_as_requests_for_the_group_it_goes_to_and_a_stale_one_as_none(local_ray):
    from deployments.routing.autoscaling import memory_aware_policy
    from deployments.routing.job_backlog import MAX_AGE_S, READ_EVERY_S, publish_backlog, read_backlog

    context = _context(running=["a"], ready={"a": 1.0}, requests=1, app_name="backlog-app")
    assert memory_aware_policy(context)[0] == 1

    publish_backlog("backlog-app", {"gpu_group": 5})
    # The controller reads the figure at most once every READ_EVERY_S (its loop calls each group's policy each turn).
    wait_for_condition(lambda: memory_aware_policy(context)[0] == 6, timeout_s=READ_EVERY_S + 2)
    desired, reason = memory_aware_policy(context)

    assert desired == 6  # 1 request + 5 queued segments, a target of 1 each (Serve then caps at max_replicas)
    assert "5 of them job segments waiting" in reason["reason"]
    assert read_backlog("backlog-app", "cpu_group") == 0  # published for the GPU group only
    assert read_backlog("another-app", "gpu_group") == 0
    import time

    assert read_backlog("backlog-app", "gpu_group", now=time.time() + MAX_AGE_S + 1) == 0  # a runner that died


def test_the_runner_sees_interactive_load_while_a_request_is_in_flight_and_for_a_quiet_period_after(local_ray):
    import time

    from deployments.routing.interactive_load import InteractiveLoad, interactive_busy

    load = InteractiveLoad()
    assert not interactive_busy("load-app", quiet_s=2.0)
    with load.request():
        load.publish("load-app", "ingress-1")
        assert interactive_busy("load-app", quiet_s=2.0)
        assert not interactive_busy("another-app", quiet_s=2.0)
    load.publish("load-app", "ingress-1")
    assert interactive_busy("load-app", quiet_s=2.0)  # the last one ended just now
    assert not interactive_busy("load-app", quiet_s=2.0, now=time.time() + 2.5)  # quiet for 2.5 s
    assert not interactive_busy("load-app", quiet_s=0.0)


def test_an_ingress_withdraws_its_interactive_figure_and_a_forgotten_one_is_deleted_by_the_reader(local_ray):
    import time

    from ray.experimental import internal_kv

    from deployments.routing.interactive_load import InteractiveLoad, interactive_busy, withdraw
    from deployments.routing.job_backlog import KV_NAMESPACE

    def keys() -> list[bytes]:
        return sorted(internal_kv._internal_kv_list("interactive:gone-app:", namespace=KV_NAMESPACE))

    load = InteractiveLoad()
    load.publish("gone-app", "ingress-1")
    load.publish("gone-app", "ingress-2")
    assert keys() == [b"interactive:gone-app:ingress-1", b"interactive:gone-app:ingress-2"]
    withdraw("gone-app", "ingress-1")  # a replica stopping
    assert keys() == [b"interactive:gone-app:ingress-2"]
    # ingress-2 died without withdrawing: a reader an hour later deletes its figure.
    assert not interactive_busy("gone-app", quiet_s=2.0, now=time.time() + 3600)
    assert keys() == []


def test_an_ingress_writes_its_figure_when_requests_start_and_stop_not_on_every_tick(local_ray):
    import asyncio
    import json
    import time

    from ray.experimental import internal_kv

    from deployments.routing.interactive_load import REFRESH_S, InteractiveLoad
    from deployments.routing.job_backlog import KV_NAMESPACE

    def figure() -> dict | None:
        raw = internal_kv._internal_kv_get("interactive:quiet-app:ingress-1", namespace=KV_NAMESPACE)
        return json.loads(raw) if raw else None

    async def until(condition, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, "the figure did not change in time"
            await asyncio.sleep(0.02)

    async def scenario() -> None:
        load = InteractiveLoad()
        publisher = asyncio.get_running_loop().create_task(load.publish_forever("quiet-app", "ingress-1"))
        await asyncio.sleep(0.5)
        assert figure() is None  # nothing in flight, nothing said: no write at all
        with load.request():
            await until(lambda: (figure() or {}).get("in_flight") == 1)
            written_at = figure()["at"]
            with load.request():  # a second request changes nothing the reader decides on
                await asyncio.sleep(0.5)
            assert figure()["at"] == written_at
            await until(lambda: figure()["at"] > written_at, timeout_s=REFRESH_S + 2)  # refreshed while in flight
        await until(lambda: figure()["in_flight"] == 0)
        quiet_at = figure()["at"]
        await asyncio.sleep(REFRESH_S + 0.5)
        assert figure()["at"] == quiet_at  # quiet and told: no more writes
        publisher.cancel()

    asyncio.run(scenario())
