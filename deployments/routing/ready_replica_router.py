"""Serve's request router for the model groups: ready replicas first, so a new replica's load is never hit.

A replica is RUNNING for Serve as soon as its constructor returns, while its model still loads in the
background (or waits for memory). Serve's default router would send it calls (its queue is the shortest),
and each would fail with ``ReplicaUnavailableError``: the group router would count the group broken and
open its breaker while the other replicas serve. Every replica reports ``{"ready": true|false}`` through
``record_routing_stats`` (every :data:`ROUTING_STATS_PERIOD_S`); this router chooses among the ready ones,
two at random and the one with the shorter queue (Serve's power of two choices). A replica that has not
reported yet counts as not ready. Only when none is ready does it choose among all, so that a group whose
one replica waits for memory still answers at once with the reason (and the group router moves the call).

It runs in the caller's process (the ingress), so it imports no torch.
"""

import random
from typing import List, Optional

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

READY_STAT = "ready"
ROUTING_STATS_PERIOD_S = 1.0
ROUTER_CLASS_PATH = "deployments.routing.ready_replica_router:ReadyReplicaRouter"


def ready_first(candidates: List[RunningReplica]) -> List[RunningReplica]:
    """The ready candidates, or all of them when none is."""
    ready = [replica for replica in candidates if (replica.routing_stats or {}).get(READY_STAT)]
    return ready or list(candidates)


class ReadyReplicaRouter(FIFOMixin, RequestRouter):
    async def choose_replicas(
        self, candidate_replicas: List[RunningReplica], pending_request: Optional[PendingRequest] = None
    ) -> List[List[RunningReplica]]:
        pool = ready_first(candidate_replicas)
        if not pool:
            return []
        return [random.sample(pool, min(2, len(pool)))]
