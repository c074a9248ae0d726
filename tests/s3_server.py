"""A real S3-compatible endpoint on loopback for the storage tests: moto's standalone server, one process.

Started by the ``s3_endpoint`` fixture (tests/conftest.py) and stopped by its pid; its objects live in
that process's memory only.
"""

import contextlib
import subprocess
import sys
from typing import Any, Iterator

import httpx
from net import free_port
from polling import wait_for_condition
from processes import stop_process

CREDENTIALS = {"key": "test-key", "secret": "test-secret"}


@contextlib.contextmanager
def moto_s3_server(log_path) -> Iterator[str]:
    """The endpoint URL of a moto server started here; stopped (by pid) on the way out."""
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_condition(lambda: httpx.get(url, timeout=2).status_code < 500, timeout_s=60, interval_s=0.2)
        yield url
    finally:
        stop_process(process)


def storage_options(endpoint_url: str) -> dict:
    return {**CREDENTIALS, "endpoint_url": endpoint_url}


def new_bucket_store(endpoint_url: str) -> Any:
    """A file store (``deployments.files.store.FileStore``) in a new bucket of its own on ``endpoint_url``."""
    import uuid

    import fsspec

    from deployments.files.store import FileStore

    bucket = f"vd-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", **storage_options(endpoint_url)).mkdir(bucket)
    return FileStore(f"s3://{bucket}/files", storage_options(endpoint_url))
