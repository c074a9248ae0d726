"""Waiting in the benches for a condition on a server that may be restarting, with a deadline."""

import time
from typing import Any, Callable


def wait_for(
    condition: Callable[[], Any],
    timeout_s: float,
    what: str,
    *,
    interval_s: float,
    tolerated: tuple[type[BaseException], ...],
) -> Any:
    """``condition()``'s first true value; the ``tolerated`` errors count as not yet; ``TimeoutError`` naming
    ``what`` past ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except tolerated:
            pass
        time.sleep(interval_s)
    raise TimeoutError(f"{what}: not within {timeout_s} s")
