"""The load figures routers and autoscalers read from Ray's GCS: a job backlog, and the ingresses' interactive load,
written, read, withdrawn and expired on a real GCS."""

import pytest
from autoscaling_context import autoscaling_context
from polling import wait_for_condition

pytestmark = pytest.mark.component


def test_a_job_backlog_counts_as_requests_for_the_group_it_goes_to_and_a_stale_one_as_none(local_ray):
    from deployments.routing.autoscaling import memory_aware_policy
    from deployments.routing.job_backlog import MAX_AGE_S, READ_EVERY_S, publish_backlog, read_backlog

    context = autoscaling_context(running=["a"], ready={"a": 1.0}, requests=1, app_name="backlog-app")
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
