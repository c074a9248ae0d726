"""Ray Serve settings that cut the CPU it spends around each request, measured by ``bench/overhead.py``.

On 2 cores beside vLLM every millisecond of the layer is taken from the engine (docs/benchmarks.md, "The layer
around vLLM"). Serve reads these from the environment when a process starts:

- :data:`REPLICA_ENV`, in every replica of ours (set through each deployment's ``runtime_env``, so they hold on any
  cluster): user code and the handles' router run on the replica's own event loop, not on loops in threads of
  their own, so a request does not cross threads on its way in and out. Only replicas get them: a handle made
  with the router on the caller's loop cannot be used outside an event loop, as a driver script or a test does
  (``handle.method.remote().result()``); our replicas call handles only from their event loop.
- :data:`METRICS_ENV`, in our replicas and in the node's environment (Serve's HTTP proxy has only that one): each
  Serve process hands its request counters and latencies to Ray's metrics once a second, not ten times (a
  Prometheus scrape is every 10-15 s). Idle, each of them spent 0.25-0.35% of a core less (docs/benchmarks.md).
- :data:`CLUSTER_ENV`, for Serve's controller and proxy, which take their environment from the node's: the
  controller's loop at 0.5 s instead of 0.1 s (it read the cluster's state ten times a second, 3-4% of a core with
  no request in flight), and :data:`METRICS_ENV`. Set where Ray starts: the image (deploy/Dockerfile),
  ``bin/serve``, the benchmarks and the tests (:func:`apply_cluster_env`).
"""

import os
from typing import MutableMapping

METRICS_ENV = {"RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000"}
REPLICA_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    **METRICS_ENV,
}
CLUSTER_ENV = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5", **METRICS_ENV}


def apply_cluster_env(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set :data:`CLUSTER_ENV` before Ray starts, leaving any value already given alone."""
    for name, value in CLUSTER_ENV.items():
        environ.setdefault(name, value)
