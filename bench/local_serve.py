"""A Ray instance and Serve HTTP proxy owned by one benchmark run, in a folder it deletes after."""

import contextlib
import os
import pathlib
import shutil
import socket
import tempfile
from typing import Iterator

from deployments.serve_env import apply_cluster_env

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
apply_cluster_env()

import ray  # noqa: E402
from ray import serve  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def local_serve(*, num_cpus: int, num_gpus: int = 0) -> Iterator[tuple[str, pathlib.Path]]:
    """Start Ray (``address='local'``: never an existing cluster) and Serve; yield (base URL, work folder).

    ``num_gpus`` is logical: GPU-group replicas get scheduled on a machine without one.
    The tiny model is built inside the work folder, so a run leaves nothing behind.
    """
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="vd-bench-"))
    os.environ["VIDEO_DETECTIVE_CACHE"] = str(workdir / "cache")
    try:
        ray.init(
            address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
            _temp_dir=str(workdir / "ray"), log_to_driver=False,
        )
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield f"http://127.0.0.1:{port}", workdir
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
