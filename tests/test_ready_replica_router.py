"""ReadyReplicaRouter's choice and its media affinity, with small stand-ins for Serve's RunningReplica (pure routing
logic)."""

import asyncio
import dataclasses

import numpy as np
import pytest

from deployments.routing.media_affinity import MEDIA_STAT, AffinitySettings, MediaAffinity, media_of
from deployments.routing.ready_replica_router import ReadyReplicaRouter, ready_first
from models.requests import ChatMessage, GenerationRequest, TextPart, VideoPart

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


# -- media affinity ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class Running:
    replica_id: str
    routing_stats: dict


def _pool(*media_lists: list[str]) -> list[Running]:
    return [Running(f"r{index}", {"ready": True, MEDIA_STAT: media}) for index, media in enumerate(media_lists)]


def test_a_call_goes_to_the_replica_that_reported_its_media():
    pool = _pool(["a"], ["b", "c"], [])
    affinity = MediaAffinity(AffinitySettings())

    assert affinity.choose(("c",), pool, lambda replica: 0) is pool[1]


def test_new_media_goes_to_the_less_loaded_of_two_and_its_next_question_follows_at_once():
    pool = _pool([], [], [])
    affinity = MediaAffinity(AffinitySettings())
    load = {"r0": 3, "r1": 1, "r2": 0}

    chosen = affinity.choose(("new",), pool, lambda replica: load[replica.replica_id], sample=lambda replicas, k: replicas[:2])

    assert chosen is pool[1]  # of the two sampled, r0 and r1, the less loaded
    assert affinity.choose(("new",), pool, lambda replica: load[replica.replica_id]) is pool[1]  # before any report


def test_the_replica_holding_most_of_a_calls_media_is_first():
    pool = _pool(["a"], ["a", "b"])
    assert MediaAffinity(AffinitySettings()).holders(("a", "b"), pool) == [pool[1], pool[0]]


def test_affinity_yields_when_the_holder_is_busier_than_the_bound():
    pool = _pool(["a"], [])
    affinity = MediaAffinity(AffinitySettings(max_load_gap=2))
    load = {"r0": 3, "r1": 1}

    assert affinity.choose(("a",), pool, lambda replica: load[replica.replica_id]) is pool[0]  # 2 more: within
    load["r0"] = 4
    assert affinity.choose(("a",), pool, lambda replica: load[replica.replica_id]) is pool[1]  # 3 more: load wins


def test_the_routers_own_record_covers_the_time_before_the_next_report_and_forgets_a_dead_replica():
    pool = _pool([], [])
    affinity = MediaAffinity(AffinitySettings())
    affinity.sent(("a",), "r1")

    assert affinity.choose(("a",), pool, lambda replica: 0) is pool[1]
    affinity.forget_replica("r1")
    assert affinity.holders(("a",), pool) == []


def test_affinity_off_and_calls_without_media_choose_nothing():
    assert MediaAffinity(AffinitySettings(enabled=False)).choose(("a",), _pool(["a"]), lambda replica: 0) is None
    assert MediaAffinity(AffinitySettings()).choose((), _pool(["a"]), lambda replica: 0) is None


def test_a_calls_media_are_its_requests_identities():
    request = GenerationRequest(messages=(ChatMessage("user", (
        VideoPart(np.zeros((2, 4, 4, 3), np.uint8), (0.0, 1.0), source="s"), TextPart("?"))),))
    assert media_of([request]) == (request.messages[0].content[0].media_id,) and media_of([]) == ()
