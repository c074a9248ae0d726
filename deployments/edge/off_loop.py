"""Blocking request work (decoding media, reading the file store) in a worker thread, stopped when its request ends.

A cancelled ``asyncio.to_thread`` leaves its thread running: a decode of a hostile file ran on after Serve
answered 408, and a handful of them filled the ingress's thread pool. Here the request's end (the client left,
or Serve timed it out: either cancels the handler) sets the request's stop event, which the decode checks at
every frame (:class:`models.media.decode_budget.DecodeBudget`).
"""

import asyncio
import threading
from typing import Any, Callable, TypeVar

Result = TypeVar("Result")


async def run_off_loop(stop: threading.Event, function: Callable[..., Result], /, *args: Any, **kwargs: Any) -> Result:
    """``function(*args, **kwargs)`` in a worker thread; if the caller is cancelled first, ``stop`` is set."""
    try:
        return await asyncio.to_thread(function, *args, **kwargs)
    except asyncio.CancelledError:
        stop.set()
        raise
