"""Serve's settings that cut its CPU around each request (deployments/serve_env.py) are in force where Serve reads
them: every replica of the app has them in its environment (set through its runtime_env, whatever the node's
environment), and Serve's controller and HTTP proxy have theirs (from the environment Ray started in)."""

import psutil
import pytest
from polling import wait_for_condition

from deployments.serve_env import CLUSTER_ENV, REPLICA_ENV

pytestmark = pytest.mark.integration


def _processes(marker: str) -> list[psutil.Process]:
    return [process for process in psutil.process_iter(["cmdline"]) if marker in " ".join(process.info["cmdline"] or ())]


def _settings(process: psutil.Process, names: dict[str, str]) -> dict[str, str | None]:
    environment = process.environ()
    return {name: environment.get(name) for name in names}


def test_every_replica_and_serves_own_processes_run_with_the_settings(base_url):
    for deployment in ("Ingress", "cpu_group", "gpu_group", "JobRunner"):
        wait_for_condition(lambda: _processes(f"ServeReplica:video-detective:{deployment}"), timeout_s=60)
    for replica in _processes("ServeReplica:video-detective:"):
        assert _settings(replica, REPLICA_ENV) == REPLICA_ENV, replica.cmdline()
    for marker in ("ServeController", "ProxyActor"):
        (process, *_) = _processes(marker)
        assert _settings(process, CLUSTER_ENV) == CLUSTER_ENV, marker
