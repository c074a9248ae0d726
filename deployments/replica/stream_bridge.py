"""From the scheduler thread to an async generator: one request's events, delivered on the event loop.

:class:`StreamBridge` is the :class:`~models.engines.contract.RequestSink` of one request. The scheduler
thread calls it; each call puts an item on an ``asyncio.Queue`` through
``loop.call_soon_threadsafe``, so the replica's async ``generate_stream`` awaits the items
without ever blocking the event loop. Its ``stop`` event is what the scheduler checks between
steps: setting it (the caller went away, or gave up) takes the request out of the batch.

:meth:`StreamBridge.next` hands text pieces that arrived together over as one: a replica whose event loop was
busy sends the caller one message for the pieces of several decode steps, not one Ray message a piece.
"""

import asyncio
import collections
import threading
from typing import Any

from memory.admission import RequestCost
from models.media.request_shrink import OomRetry
from models.requests import GenerationRequest, GenerationResult, TextDelta


class Opened:
    def __init__(self, used: GenerationRequest, retries: tuple[OomRetry, ...], cost: RequestCost, prompt_tokens: int) -> None:
        self.used, self.retries, self.cost, self.prompt_tokens = used, retries, cost, prompt_tokens


class StreamBridge:
    def __init__(self, loop: asyncio.AbstractEventLoop, *, streams_text: bool = True) -> None:
        self._loop = loop
        self.streams_text = streams_text
        self._items: asyncio.Queue = asyncio.Queue()
        self._taken: collections.deque = collections.deque()  # taken from the queue, not yet handed over
        self.stop = threading.Event()

    # -- the scheduler thread's side (RequestSink) ----------------------------------------------

    def opened(
        self, used: GenerationRequest, retries: tuple[OomRetry, ...], cost: RequestCost, prompt_tokens: int = 0
    ) -> None:
        self._put(Opened(used, retries, cost, prompt_tokens))

    def text(self, delta: TextDelta) -> None:
        self._put(delta)

    def finished(self, result: GenerationResult) -> None:
        self._put(result)

    def failed(self, error: BaseException) -> None:
        self._put(error)

    def _put(self, item: Any) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)

    # -- the event loop's side -----------------------------------------------------------------

    async def next(self) -> Opened | TextDelta | GenerationResult:
        """The next event; text pieces already waiting behind a text piece come with it, joined. An error the
        scheduler reported is raised here, after every event before it."""
        item = self._taken.popleft() if self._taken else await self._items.get()
        if isinstance(item, TextDelta):
            while not self._items.empty():
                self._taken.append(self._items.get_nowait())
            while self._taken and isinstance(self._taken[0], TextDelta):
                item = item.followed_by(self._taken.popleft())
        if isinstance(item, BaseException):
            raise item
        return item
