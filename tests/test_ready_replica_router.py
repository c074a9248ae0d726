"""ReadyReplicaRouter's choice with small stand-ins for Serve's RunningReplica (pure routing logic)."""

import asyncio
import dataclasses

import pytest

from deployments.routing.ready_replica_router import ReadyReplicaRouter, ready_first

pytestmark = pytest.mark.unit


@dataclasses.dataclass(frozen=True, eq=False)
class Replica:
    name: str
    routing_stats: dict


def test_only_ready_replicas_are_chosen_while_any_is_ready():
    loading, ready, unreported = Replica("a", {"ready": False}), Replica("b", {"ready": True}), Replica("c", {})

    assert ready_first([loading, ready, unreported]) == [ready]


def test_with_none_ready_every_replica_is_a_candidate_so_the_reason_comes_back_at_once():
    loading, waiting = Replica("a", {"ready": False}), Replica("b", {})

    assert ready_first([loading, waiting]) == [loading, waiting]


def test_the_router_offers_two_ready_replicas_for_the_shorter_queue():
    replicas = [Replica(str(index), {"ready": index % 2 == 0}) for index in range(6)]

    ranks = asyncio.run(ReadyReplicaRouter.choose_replicas(None, replicas))  # uses no router state

    (rank,) = ranks
    assert len(rank) == 2 and rank[0] is not rank[1]
    assert all(replica.routing_stats["ready"] for replica in rank)
