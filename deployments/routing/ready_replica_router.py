"""Serve's request router for the model groups: ready replicas first, then the replica that holds a call's media.

A replica is RUNNING for Serve as soon as its constructor returns, while its model still loads in the
background (or waits for memory). Serve's default router would send it calls (its queue is the shortest),
and each would fail with ``ReplicaUnavailableError``: the group router would count the group broken and
open its breaker while the other replicas serve. Every replica reports ``{"ready": true|false}`` through
``record_routing_stats`` (every :data:`ROUTING_STATS_PERIOD_S`); this router chooses among the ready ones.
A replica that has not reported yet counts as not ready. Only when none is ready does it choose among all, so that
a group whose one replica waits for memory still answers at once with the reason (and the group router moves
the call).

Among the ready replicas, a call about media that one of them holds encoded goes there first
(:mod:`deployments.routing.media_affinity`: its load guard, its record of where media went); otherwise, and when
that replica's queue is full, two at random and the one with the shorter queue (Serve's power of two choices).

It runs in the caller's process (the ingress, the job runner), so it imports no torch.
"""

import random
from typing import Any, List, Optional

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

from deployments.routing.media_affinity import MEDIA_STAT, AffinitySettings, MediaAffinity, media_of

READY_STAT = "ready"
ROUTING_STATS_PERIOD_S = 1.0
ROUTER_CLASS_PATH = "deployments.routing.ready_replica_router:ReadyReplicaRouter"

__all__ = ["MEDIA_STAT", "READY_STAT", "ROUTER_CLASS_PATH", "ROUTING_STATS_PERIOD_S", "ReadyReplicaRouter", "ready_first"]


def ready_first(candidates: List[RunningReplica]) -> List[RunningReplica]:
    """The ready candidates, or all of them when none is."""
    ready = [replica for replica in candidates if (replica.routing_stats or {}).get(READY_STAT)]
    return ready or list(candidates)


class ReadyReplicaRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, media_affinity: bool = True, max_load_gap: int = 2, **kwargs: Any) -> None:
        """``request_router_kwargs`` of the group's deployment (the config's ``routing.media_affinity*``)."""
        self._affinity = MediaAffinity(AffinitySettings(enabled=media_affinity, max_load_gap=max_load_gap))

    async def choose_replicas(
        self, candidate_replicas: List[RunningReplica], pending_request: Optional[PendingRequest] = None
    ) -> List[List[RunningReplica]]:
        pool = ready_first(candidate_replicas)
        if not pool:
            return []
        ranks = [random.sample(pool, min(2, len(pool)))]
        affinity = getattr(self, "_affinity", None)
        if affinity is not None and pending_request is not None:
            chosen = affinity.choose(media_of(pending_request.args), pool, self._queue_len)
            if chosen is not None:
                ranks.insert(0, [chosen])  # full (its max_ongoing_requests): Serve goes on to the next rank
        return ranks

    def on_request_routed(self, pending_request: PendingRequest, replica_id: Any, result: Any) -> None:
        affinity = getattr(self, "_affinity", None)
        if affinity is not None:
            affinity.sent(media_of(pending_request.args), replica_id)

    def on_replica_actor_died(self, replica_id: Any) -> None:
        super().on_replica_actor_died(replica_id)
        affinity = getattr(self, "_affinity", None)
        if affinity is not None:
            affinity.forget_replica(replica_id)

    def _queue_len(self, replica: RunningReplica) -> int | None:
        return self.replica_queue_len_cache.get(replica.replica_id)
