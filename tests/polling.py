"""Poll with a timeout instead of sleeping a fixed time."""

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for_condition(condition: Callable[[], T], *, timeout_s: float = 60.0, interval_s: float = 0.25) -> T:
    """Return ``condition()``'s first true value; raise ``TimeoutError`` with the last error otherwise."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
            last_error = None
        except Exception as error:  # noqa: BLE001 - kept and reported if the wait times out
            last_error = error
        time.sleep(interval_s)
    raise TimeoutError(f"Condition not met within {timeout_s} s (last error: {last_error!r})")
