"""``bin/serve``, the README's main command, stopped the way a service manager stops it: SIGTERM, then a clean exit.

Ray's own handler answers SIGTERM with a C++ stack dump and a death mid-shutdown; ``bin/serve`` turns it
into ``serve run``'s Ctrl-C path, which deletes the app and stops Ray in order. The server runs on a free
port from a copy of ``serve_config.yaml``, with Ray's temp dir inside the test folder; it is stopped by
the pid this test started, and anything left of it is found by that temp dir.
"""

import os
import pathlib
import signal
import subprocess

import httpx
import psutil
import pytest
import yaml
from net import free_port
from polling import wait_for_condition

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _processes_under(temp_dir: pathlib.Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(temp_dir) in part for part in process.info["cmdline"] or ()):
            found.append(process)
    return found


@pytest.mark.integration
def test_sigterm_stops_bin_serve_cleanly(test_root):
    port = free_port()
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    config_path = test_root / "bin-serve-config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    temp_dir = test_root / "bin-serve-ray"
    temp_dir.mkdir()
    log_path = test_root / "bin-serve.log"
    env = {**os.environ, "SERVE_CONFIG": str(config_path), "RAY_TMPDIR": str(temp_dir)}
    with open(log_path, "wb") as log:
        server = subprocess.Popen([str(ROOT / "bin" / "serve")], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        healthz = f"http://127.0.0.1:{port}/healthz"
        wait_for_condition(lambda: httpx.get(healthz, timeout=2).status_code == 200, timeout_s=180, interval_s=1)

        server.send_signal(signal.SIGTERM)
        returncode = server.wait(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()

    output = log_path.read_text(errors="replace")
    try:
        assert "SIGTERM received" not in output and "logging.cc" not in output
        assert returncode == 0, output[-2000:]
        wait_for_condition(lambda: not _processes_under(temp_dir), timeout_s=30, interval_s=0.5)  # Ray stopped too
    finally:
        for leftover in _processes_under(temp_dir):  # only what this test's server started: its own temp dir
            leftover.kill()
