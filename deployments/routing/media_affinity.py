"""Which replica of a group a question about known media goes to: the one that holds the media encoded.

Every model replica names the media identities its engine holds encoded (:meth:`~models.engines.contract.Engine.
cached_media`, most recent first) in its routing stats, once a second. The router adds what it sent itself since:
the replica each media's last call went to, so that the second question, asked before the next report, follows the
first. A call whose media one of the ready replicas holds goes to that replica, unless that replica has more than
``max_load_gap`` requests in flight beyond the group's least-loaded ready replica (vLLM's and Serve's prefix-affinity
routers guard the same way). New media, and calls past the bound, go to the less loaded of two replicas at random
(Serve's power of two choices), and that choice is recorded at once: concurrent questions about a new video meet on
one replica instead of each encoding it on another. Calls without media are Serve's to place.

Pure logic over Serve's replica objects (their ``replica_id``, ``routing_stats``), tested with small stand-ins.
"""

import collections
import dataclasses
import random
from typing import Any, Callable, Hashable, Sequence

MEDIA_STAT = "media"
_REMEMBERED_MEDIA = 4096  # the router's own record of where media went: the most recent, bounded


@dataclasses.dataclass(frozen=True)
class AffinitySettings:
    enabled: bool = True
    max_load_gap: int = 2


def media_of(args: Sequence[Any]) -> tuple[str, ...]:
    """The media identities of a call's request (a :class:`~models.requests.GenerationRequest` first argument), or
    none for calls that carry no request (pings)."""
    request = args[0] if args else None
    return tuple(getattr(request, "media_ids", ()) or ())


class MediaAffinity:
    def __init__(self, settings: AffinitySettings) -> None:
        self.settings = settings
        self._sent: collections.OrderedDict[str, Hashable] = collections.OrderedDict()  # media id -> replica id

    def holders(self, media: tuple[str, ...], pool: Sequence[Any]) -> list[Any]:
        """The replicas of ``pool`` that hold the most of ``media`` (by their report or this router's record), the
        best first; empty when none holds any."""
        if not self.settings.enabled or not media:
            return []
        wanted = set(media)
        scores: list[tuple[int, int, Any]] = []
        for position, replica in enumerate(pool):
            reported = set((getattr(replica, "routing_stats", None) or {}).get(MEDIA_STAT) or ())
            held = sum(1 for media_id in wanted if media_id in reported or self._sent.get(media_id) == replica.replica_id)
            if held:
                scores.append((held, -position, replica))
        scores.sort(key=lambda score: score[:2], reverse=True)
        return [replica for *_, replica in scores]

    def choose(
        self, media: tuple[str, ...], pool: Sequence[Any], queue_len: Callable[[Any], int | None],
        sample: Callable[[Sequence[Any], int], list[Any]] = random.sample,
    ) -> Any | None:
        """The replica this call should go to for its media, or ``None`` (a call without media, affinity off): the
        replica that holds the media, unless it is more than ``max_load_gap`` requests busier than the least-loaded
        (``queue_len``: a replica's requests in flight as this router last knew them, ``None`` when unknown, taken
        as 0); for media no replica holds (or past the bound), the less loaded of two at random (Serve's power of
        two choices), recorded at once as the media's replica, so that its next question, sent before this one is
        even accepted, follows it there."""
        if not self.settings.enabled or not media:
            return None
        for holder in self.holders(media, pool)[:1]:
            least = min((queue_len(replica) or 0) for replica in pool)
            if (queue_len(holder) or 0) - least <= self.settings.max_load_gap:
                return holder
        chosen = min(sample(pool, min(2, len(pool))), key=lambda replica: queue_len(replica) or 0)
        self.sent(media, chosen.replica_id)
        return chosen

    def sent(self, media: tuple[str, ...], replica_id: Hashable) -> None:
        """Record where a call with ``media`` went: its next question follows it before the replica's next report."""
        for media_id in media:
            self._sent[media_id] = replica_id
            self._sent.move_to_end(media_id)
        while len(self._sent) > _REMEMBERED_MEDIA:
            self._sent.popitem(last=False)

    def forget_replica(self, replica_id: Hashable) -> None:
        """A replica that died holds nothing any more."""
        for media_id in [media_id for media_id, holder in self._sent.items() if holder == replica_id]:
            del self._sent[media_id]
