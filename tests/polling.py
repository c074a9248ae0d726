"""Poll with a timeout instead of sleeping a fixed time."""

import time
from typing import Callable


def wait_for_condition(condition: Callable[[], bool], *, timeout_s: float = 60.0, interval_s: float = 0.25) -> None:
    """Return once ``condition()`` is true; raise ``TimeoutError`` with the last error otherwise."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if condition():
                return
            last_error = None
        except Exception as error:  # noqa: BLE001 - kept and reported if the wait times out
            last_error = error
        time.sleep(interval_s)
    raise TimeoutError(f"Condition not met within {timeout_s} s (last error: {last_error!r})")
