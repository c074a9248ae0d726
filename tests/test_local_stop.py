"""bin/serve's stop kills the Serve replicas that were never scheduled, and nothing else, on a real Ray instance.
The whole stop, through real Serve and SIGTERM, is tests/integration/test_bin_serve.py."""

import pytest
import ray
from polling import wait_for_condition

from deployments.local_stop import REPLICA_PREFIX, SERVE_NAMESPACE, kill_unscheduled_replicas

pytestmark = pytest.mark.component


@ray.remote(num_cpus=0)
class Idle:
    def ping(self) -> str:
        return "pong"


def _alive(name: str, namespace: str) -> bool:
    try:
        ray.get_actor(name, namespace=namespace)
        return True
    except ValueError:
        return False


def test_only_replicas_waiting_for_resources_are_killed(local_ray):
    never = f"{REPLICA_PREFIX}app#gpu_group#never"
    running = f"{REPLICA_PREFIX}app#cpu_group#running"
    # A replica that asks for a resource no node has waits to be created, as the GPU group does without a GPU.
    pending = Idle.options(name=never, namespace=SERVE_NAMESPACE, resources={"no-such-device": 1}).remote()
    started = Idle.options(name=running, namespace=SERVE_NAMESPACE).remote()
    assert ray.get(started.ping.remote(), timeout=60) == "pong"
    other = Idle.options(name="not-a-replica", namespace=SERVE_NAMESPACE, resources={"no-such-device": 1}).remote()

    try:
        killed = kill_unscheduled_replicas()

        assert killed == [never]
        wait_for_condition(lambda: not _alive(never, SERVE_NAMESPACE), timeout_s=10)
        assert _alive(running, SERVE_NAMESPACE) and _alive("not-a-replica", SERVE_NAMESPACE)
        assert ray.get(started.ping.remote(), timeout=10) == "pong"
    finally:
        for handle in (pending, started, other):  # held until here: an actor no one holds dies at once
            ray.kill(handle, no_restart=True)
