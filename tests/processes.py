"""Stopping what a test started: by its pid, never by name."""

import subprocess


def stop_process(process: subprocess.Popen, *, timeout_s: float = 10) -> None:
    """SIGTERM to a server a test started (by its pid), then SIGKILL if it has not exited within ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
