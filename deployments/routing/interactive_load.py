"""Interactive load as the job runner sees it: segments back off while people are waiting for answers.

Each ingress replica counts its interactive requests (chat and analyze) in flight and when it last saw one
(:class:`InteractiveLoad`), and publishes both in the GCS's key-value store when it goes from none in flight to
some or back (at most every ``PUBLISH_PERIOD_S``), and every ``REFRESH_S`` while some are in flight: a write per
change of state, not four a second under load. The job runner reads them (:func:`interactive_busy`) while it has
jobs to run. While any ingress has one in flight, or had one within ``quiet_s``, the runner sends at most
``jobs.max_running_segments_under_load`` segments at once instead of ``jobs.max_running_segments``. Segments
already running finish; none is preempted.
"""

import asyncio
import contextlib
import json
import logging
import time
from typing import AsyncIterator, Iterator, TypeVar

from ray.experimental import internal_kv

from deployments.routing.job_backlog import KV_NAMESPACE

logger = logging.getLogger(__name__)

PUBLISH_PERIOD_S = 0.25  # the least time between two writes of one ingress's figure
REFRESH_S = 2.0  # while requests are in flight, the figure is written again this often (under _STALE_S)
_STALE_S = 10.0  # a figure this old is from an ingress that went away
_FORGOTTEN_S = 600.0  # and one this old is deleted by the reader: no live ingress leaves its figure this long
# A request counted in flight with nothing started or ended on that ingress for this long is taken for a count
# that was never given back (a stream no one closed), so that it cannot hold jobs back for good.
_STUCK_S = 300.0

T = TypeVar("T")


def _prefix(app_name: str) -> str:
    return f"interactive:{app_name}:"


class InteractiveLoad:
    """One ingress replica's interactive requests: how many are in flight, and when the last one started or ended."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.last_at = 0.0
        self.changed = asyncio.Event()  # set when in_flight goes from 0 to 1 or back: the publisher writes then

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        self.in_flight += 1
        self.last_at = time.time()
        if self.in_flight == 1:
            self.changed.set()
        try:
            yield
        finally:
            self.in_flight -= 1
            self.last_at = time.time()
            if self.in_flight == 0:
                self.changed.set()

    async def publish_forever(self, app_name: str, replica_id: str) -> None:
        """Write the figure at each change of state and every ``REFRESH_S`` while requests are in flight."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=REFRESH_S)
            if not self.changed.is_set() and self.in_flight == 0:
                continue  # quiet, and already told
            self.changed.clear()
            try:
                await asyncio.to_thread(self.publish, app_name, replica_id)
            except Exception as error:  # noqa: BLE001 - jobs then run at their usual bound
                logger.warning("Publishing the interactive load failed: %s", error)
            await asyncio.sleep(PUBLISH_PERIOD_S)

    async def counted(self, stream: AsyncIterator[T]) -> AsyncIterator[T]:
        """``stream``, counted as one request in flight until it ends."""
        with self.request():
            async for item in stream:
                yield item

    def publish(self, app_name: str, replica_id: str) -> None:
        value = json.dumps({"at": time.time(), "in_flight": self.in_flight, "last_at": self.last_at}).encode()
        internal_kv._internal_kv_put(f"{_prefix(app_name)}{replica_id}", value, overwrite=True, namespace=KV_NAMESPACE)


def withdraw(app_name: str, replica_id: str) -> None:
    """Delete an ingress replica's figure (it is stopping): a key per replica would otherwise stay in the GCS."""
    internal_kv._internal_kv_del(f"{_prefix(app_name)}{replica_id}", namespace=KV_NAMESPACE)


def interactive_busy(app_name: str, quiet_s: float, *, now: float | None = None) -> bool:
    """Whether any ingress of ``app_name`` has an interactive request in flight or had one within ``quiet_s``."""
    now = time.time() if now is None else now
    try:
        keys = internal_kv._internal_kv_list(_prefix(app_name), namespace=KV_NAMESPACE)
        values = [internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE) for key in keys]
    except Exception as error:  # noqa: BLE001 - without the figure, segments run at the usual bound
        logger.warning("Reading the interactive load failed: %s", error)
        return False
    for key, raw in zip(keys, values):
        if not raw:
            continue
        published = json.loads(raw)
        if now - published["at"] > _FORGOTTEN_S:  # an ingress that died without withdrawing it
            _drop(key)
            continue
        if now - published["at"] > _STALE_S:
            continue
        since_last_s = now - published["last_at"]
        if (published["in_flight"] > 0 and since_last_s < _STUCK_S) or since_last_s < quiet_s:
            return True
    return False


def _drop(key: bytes | str) -> None:
    try:
        internal_kv._internal_kv_del(key, namespace=KV_NAMESPACE)
    except Exception as error:  # noqa: BLE001 - the next read tries again
        logger.warning("Deleting the stale interactive-load key %r failed: %s", key, error)
