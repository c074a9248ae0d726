"""A bounded cache keyed by media identity (:mod:`models.media.identity`), least recently used out first.

The transformers engine keeps its vision tower's outputs and its prompts' media-prefix KV in one; vLLM's engine keeps
a record of the media it handed vLLM (whose own caches hold them). Each entry has its size in bytes; the cache never holds more than ``max_bytes``,
and gives back what it is asked to (:meth:`MediaCache.give_back`) when requests need the memory: a cache is a
speed-up, never a reason to refuse a request. Thread-safe: the engine's thread writes, describe and routing read.
No torch here.
"""

import collections
import dataclasses
import threading
from typing import Any, Generic, Hashable, TypeVar

Value = TypeVar("Value")

# At most this many identities a replica tells the affinity router (its routing stats, every second): the most
# recently used. 64 x 32 hex characters is 2 KiB a report.
ADVERTISED_MEDIA = 64


@dataclasses.dataclass
class MediaCacheStats:
    """What ``/v1/memory``, the memory view and the metrics show of a replica's media cache."""

    kind: str  # encoder_and_prefix (the vision tower's outputs and media prefixes' KV, ours) or vllm (vLLM's caches)
    max_bytes: int = 0
    bytes: int = 0
    entries: int = 0
    hits: int = 0
    misses: int = 0
    evicted: int = 0  # entries dropped to stay under max_bytes
    given_back: int = 0  # entries dropped because requests needed the memory
    given_back_bytes: int = 0

    @property
    def hit_ratio(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "hit_ratio": round(self.hit_ratio, 4)}


class MediaCache(Generic[Value]):
    def __init__(self, max_bytes: int, *, kind: str) -> None:
        self._entries: collections.OrderedDict[Hashable, tuple[Value, int, str]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.stats = MediaCacheStats(kind=kind, max_bytes=max(0, max_bytes))

    def get(self, key: Hashable) -> Value | None:
        """The value, counted as a hit (and now the most recently used), or ``None``, counted as a miss."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.stats.misses += 1
                return None
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return entry[0]

    def peek(self, key: Hashable) -> Value | None:
        """The value (now the most recently used), or ``None``, counted neither way: the caller counts
        (:meth:`count_hits`) what the lookup stands for."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def count_hits(self, hits: int) -> None:
        with self._lock:
            self.stats.hits += hits

    def put(self, key: Hashable, value: Value, size_bytes: int, *, media_id: str, room_bytes: int | None = None) -> bool:
        """Keep ``value`` (``size_bytes``) under ``key``, dropping the least recently used to stay under ``max_bytes``
        and, when given, ``room_bytes`` (what the replica's memory has spare now). Whether it was kept."""
        with self._lock:
            limit = self.stats.max_bytes if room_bytes is None else min(self.stats.max_bytes, self.stats.bytes + room_bytes)
            if size_bytes > limit or key in self._entries:
                return False
            self._entries[key] = (value, size_bytes, media_id)
            self.stats.bytes += size_bytes
            while self.stats.bytes > limit:
                self._drop_oldest()
                self.stats.evicted += 1
            self.stats.entries = len(self._entries)
            return True

    def give_back(self, wanted_bytes: int) -> int:
        """Drop the least recently used entries until ``wanted_bytes`` are free (or the cache is empty): the bytes
        freed. Called when a request needs the memory, before it would wait or be refused."""
        freed = 0
        with self._lock:
            while freed < wanted_bytes and self._entries:
                freed += self._drop_oldest()
                self.stats.given_back += 1
            self.stats.given_back_bytes += freed
            self.stats.entries = len(self._entries)
        return freed

    def media_ids(self, limit: int = ADVERTISED_MEDIA) -> list[str]:
        """The identities held, most recently used first, at most ``limit`` (duplicates of one media dropped)."""
        with self._lock:
            recent = [media_id for _, _, media_id in reversed(self._entries.values())]
        return list(dict.fromkeys(recent))[:limit]

    @property
    def bytes(self) -> int:
        return self.stats.bytes

    def _drop_oldest(self) -> int:
        _, (_, size_bytes, _) = self._entries.popitem(last=False)
        self.stats.bytes -= size_bytes
        return size_bytes
