"""A fast, clean stop of a local server (``bin/serve``): no replica that never started holds it.

``serve run`` answers Ctrl-C (and ``bin/serve`` turns SIGTERM into it) by deleting the app and waiting up to 30 s for
Serve's controller. The controller stops every replica gracefully: it asks the replica to drain and waits up to its
``graceful_shutdown_timeout_s`` (``routing.drain_timeout_s``, 600 s) before killing it. A replica that was never
scheduled (the GPU group on a machine without a GPU, waiting for resources) has no process to ask and nothing to
drain, yet it is waited for all the same: the stop took 36 s and ended with "Controller failed to shut down within
30.0s".

So on a stop, while Serve's own shutdown runs, a thread kills Serve's replica actors still waiting to be created (the
GCS's actor table, through this driver's own connection: Ray's state API would ask whichever cluster's dashboard
answers on the machine, and another Ray instance may hold the default port): Serve then finds them gone and counts
them stopped. Replicas that run are left to Serve's graceful stop.
"""

import logging
import signal
import threading
import time
from typing import Any

import ray

logger = logging.getLogger(__name__)

SERVE_NAMESPACE = "serve"
REPLICA_PREFIX = "SERVE_REPLICA::"
_SWEEP_PERIOD_S = 0.25
_SWEEP_FOR_S = 60.0
_NOT_CREATED = ("DEPENDENCIES_UNREADY", "PENDING_CREATION")  # the actor has no process yet


def kill_unscheduled_replicas() -> list[str]:
    """Kill every Serve replica actor of this driver's cluster still waiting to be created; their names."""
    from ray._private import state  # the GCS's actor table, read over this driver's connection

    killed = []
    for actor in state.actors().values():
        name = actor.get("Name") or ""
        if not name.startswith(REPLICA_PREFIX) or actor.get("State") not in _NOT_CREATED:
            continue
        try:
            ray.kill(ray.get_actor(name, namespace=SERVE_NAMESPACE), no_restart=True)
            killed.append(name)
        except ValueError:  # gone meanwhile
            continue
    return killed


def _sweep() -> None:
    deadline = time.monotonic() + _SWEEP_FOR_S
    while time.monotonic() < deadline and ray.is_initialized():
        try:
            for name in kill_unscheduled_replicas():
                logger.info("Stopped %s, which was never scheduled (nothing to drain)", name)
        except Exception as error:  # noqa: BLE001 - Ray is shutting down under it: the stop goes on without it
            logger.debug("Looking for unscheduled replicas failed: %s", error)
            return
        time.sleep(_SWEEP_PERIOD_S)


def stop_unscheduled_replicas_on_interrupt() -> None:
    """SIGINT (Ctrl-C, and SIGTERM through ``bin/serve``) raises KeyboardInterrupt as Python's default does, so that
    ``serve run`` shuts down in order, and first starts the sweep of unscheduled replicas beside that shutdown."""
    stopping = threading.Event()

    def interrupted(signum: int, frame: Any) -> None:
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=_sweep, name="unscheduled-replicas", daemon=True).start()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
