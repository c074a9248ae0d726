"""A real Prometheus (Debian's ``prometheus`` package) scraping the test cluster, one process.

Started by the dashboard test and stopped by its pid; its data lives in the test folder. Without the
binary the test skips with a message that says how to install it (``bin/test`` does, where it can).
"""

import contextlib
import os
import pathlib
import shutil
import subprocess
from typing import Iterator

import httpx
import pytest
from net import free_port
from polling import wait_for_condition
from processes import stop_process

SCRAPE_INTERVAL_S = 1


def prometheus_path() -> str:
    path = os.environ.get("VIDEO_DETECTIVE_PROMETHEUS") or shutil.which("prometheus")
    if path is None:
        pytest.skip(
            "No Prometheus for the dashboard test: install Debian's package (sudo apt-get install prometheus; bin/test "
            "does it when it runs as root) or set VIDEO_DETECTIVE_PROMETHEUS to a prometheus executable"
        )
    return path


@contextlib.contextmanager
def prometheus_server(folder: pathlib.Path, scrape_targets: list[str]) -> Iterator[str]:
    """The URL of a Prometheus scraping ``scrape_targets`` (host:port) every second; stopped (by pid) on the way out."""
    executable = prometheus_path()
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    targets = ", ".join(f"'{target}'" for target in scrape_targets)
    config.write_text(
        "global:\n"
        f"  scrape_interval: {SCRAPE_INTERVAL_S}s\n"
        f"  evaluation_interval: {SCRAPE_INTERVAL_S}s\n"
        "scrape_configs:\n"
        "  - job_name: ray\n"
        f"    static_configs:\n      - targets: [{targets}]\n"
    )
    port = free_port()
    with open(folder / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [
                executable,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_condition(lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200, timeout_s=60, interval_s=0.2)
        yield url
    finally:
        stop_process(process)


def query(url: str, expression: str) -> list[dict]:
    """An instant query's result vector; a bad expression raises with Prometheus's message."""
    response = httpx.get(f"{url}/api/v1/query", params={"query": expression}, timeout=10)
    body = response.json()
    if body.get("status") != "success":
        raise AssertionError(f"Prometheus refused {expression!r}: {body.get('error')}")
    return body["data"]["result"]
