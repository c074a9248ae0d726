"""The vision tower's outputs reused by media identity, on the real tiny model: a hit decodes exactly the tokens a
miss decodes (greedy), the cache holds each item once, gives its bytes back when asked, and keeps nothing without
an identity."""

import dataclasses

import pytest
from mixed_requests import mixed_requests
from test_batch_engine import NEW_TOKENS, decode_in_batch

from memory.admission import RequestCostModel
from memory.estimate import load_model_config
from models.decoding.grammar_server import SchemaCompileLimits
from models.engines.transformers.scheduler import BatchLimits, BatchScheduler
from models.engines.warm_up import answer_through
from models.media.identity import media_source
from models.media.media_cache import MediaCache
from models.media.request_shrink import ShrinkMinimum
from models.requests import ChatMessage, GenerationRequest, ImagePart, VideoPart

pytestmark = pytest.mark.unit


def _identified(requests: list[GenerationRequest]) -> list[GenerationRequest]:
    def part(index: int, part):
        if isinstance(part, (ImagePart, VideoPart)):
            return dataclasses.replace(part, source=media_source("owner", f"sha-{index}"))
        return part

    return [
        dataclasses.replace(request, messages=tuple(
            ChatMessage(message.role, tuple(part(index, p) for p in message.content)) for message in request.messages
        ))
        for index, request in enumerate(requests)
    ]


@pytest.fixture
def reusing(tiny_adapter):
    engine = tiny_adapter.batch_engine()
    cache = MediaCache(64 * 1024**2, kind="encoder_outputs")
    assert engine.reuse_encoder_outputs(cache, room_bytes=lambda: 1024**3)
    return engine, cache


def test_a_hit_decodes_the_tokens_a_miss_decodes(tiny_adapter, reusing):
    engine, cache = reusing
    requests = _identified(mixed_requests(new_tokens=NEW_TOKENS))
    plain = decode_in_batch(tiny_adapter.batch_engine(), requests, {0: [0, 1, 2, 3]})

    first = decode_in_batch(engine, requests, {0: [0, 1, 2, 3]})
    assert cache.stats.misses == 3 and cache.stats.hits == 0 and cache.stats.entries == 3
    second = decode_in_batch(engine, requests, {0: [1], 1: [2, 3], 2: [0]})  # alone, or beside other hits

    assert first == second == plain
    assert cache.stats.hits == 3 and cache.stats.misses == 3
    assert cache.bytes > 0 and sorted(cache.media_ids()) == sorted(
        part.media_id for request in requests for message in request.messages for part in message.content
        if isinstance(part, (ImagePart, VideoPart))
    )


def test_media_without_an_identity_is_encoded_and_not_kept(reusing):
    engine, cache = reusing
    decode_in_batch(engine, mixed_requests(new_tokens=2), {0: [0, 1, 2, 3]})
    assert cache.stats.entries == 0 and cache.stats.hits == cache.stats.misses == 0


def test_other_frames_of_the_same_file_are_other_media(reusing):
    engine, cache = reusing
    request = _identified(mixed_requests(new_tokens=2))[2]
    video = request.messages[0].content[0]
    fewer = dataclasses.replace(request, messages=(ChatMessage("user", (
        dataclasses.replace(video, frames=video.frames[:2]), *request.messages[0].content[1:])),))
    decode_in_batch(engine, [request, fewer], {0: [0], 1: [1]})
    assert cache.stats.entries == 2 and cache.stats.hits == 0


def test_the_cache_gives_its_bytes_back_least_recently_used_first(reusing):
    engine, cache = reusing
    decode_in_batch(engine, _identified(mixed_requests(new_tokens=2)), {0: [1], 1: [2], 2: [3]})
    oldest_first = list(reversed(cache.media_ids()))
    held = cache.bytes

    freed = cache.give_back(1)

    assert 0 < freed < held and cache.bytes == held - freed
    assert cache.media_ids() == list(reversed(oldest_first[1:]))
    assert cache.give_back(10 * held) == held - freed and cache.bytes == 0 and cache.stats.given_back == 3


def test_the_cache_keeps_nothing_beyond_the_room_it_is_given(tiny_adapter):
    engine = tiny_adapter.batch_engine()
    cache = MediaCache(64 * 1024**2, kind="encoder_outputs")
    engine.reuse_encoder_outputs(cache, room_bytes=lambda: 0)
    decode_in_batch(engine, _identified(mixed_requests(new_tokens=2)), {0: [1, 2, 3]})
    assert cache.stats.entries == 0 and cache.bytes == 0


def test_under_memory_pressure_the_cache_gives_back_before_a_request_waits(tiny_adapter, tiny_model_path):
    """A cache holding encoded media, and a new request that fits the headroom alone but not beside the cache: the
    request is admitted and answered, the cache gives back what it needed; nothing is refused."""
    costs = RequestCostModel.from_config(load_model_config(str(tiny_model_path)), dtype_bytes=4, device="cpu")
    cache = MediaCache(64 * 1024**2, kind="encoder_outputs")
    first, second = _identified(mixed_requests(new_tokens=2))[2:4]

    def scheduler(headroom_bytes: int) -> BatchScheduler:
        limits = BatchLimits(max_batch_size=2, max_waiting=4, headroom_bytes=headroom_bytes, max_prefill_tokens=8192,
                             schema_compile=SchemaCompileLimits())
        return BatchScheduler(tiny_adapter.batch_engine(), costs, limits, media_cache=cache,
                              shrink_minimum=ShrinkMinimum(min_frames=2, min_pixels_per_frame=3136))

    roomy = scheduler(1 << 30)
    try:
        answer_through(roomy, first, timeout_s=60)
        second_alone = roomy._predict(roomy._steps.prepare(second)).total_bytes
    finally:
        roomy.close()
    held = cache.bytes
    assert held > 0 and cache.stats.entries == 1

    tight = scheduler(second_alone + held // 2)  # the second fits alone; beside the whole cache it would not
    try:
        result = answer_through(tight, second, timeout_s=60)
    finally:
        tight.close()

    assert result.completion_tokens == 2
    assert cache.stats.given_back == 1 and cache.stats.given_back_bytes == held
    assert tight.stats.request_ooms == 0
