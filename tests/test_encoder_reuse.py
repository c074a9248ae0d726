"""The vision tower's outputs and media prefixes' KV reused by media identity, on the real tiny model: a hit decodes
exactly the tokens a miss decodes (greedy), from the prefix or from the tower's output; the cache holds each once,
gives its bytes back when asked or when a request needs them, and keeps nothing without an identity."""

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
from models.requests import ChatMessage, GenerationRequest, ImagePart, TextPart, VideoPart

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
    assert engine.reuse_media(cache, room_bytes=lambda: 1024**3)
    return engine, cache


def test_a_hit_decodes_the_tokens_a_miss_decodes(tiny_adapter, reusing):
    engine, cache = reusing
    requests = _identified(mixed_requests(new_tokens=NEW_TOKENS))
    plain = decode_in_batch(tiny_adapter.batch_engine(), requests, {0: [0, 1, 2, 3]})

    first = decode_in_batch(engine, requests, {0: [0, 1, 2, 3]})
    # Each media's tower output, and each prompt's media prefix (its KV up to the media's end).
    assert cache.stats.misses == 3 and cache.stats.hits == 0 and cache.stats.entries == 6
    second = decode_in_batch(engine, requests, {0: [1], 1: [2, 0, 3]})  # alone, or beside a prompt without media

    assert first == second == plain
    assert cache.stats.hits == 3 and cache.stats.misses == 3 and cache.stats.entries == 6
    assert cache.bytes > 0 and sorted(cache.media_ids()) == sorted(
        part.media_id for request in requests for message in request.messages for part in message.content
        if isinstance(part, (ImagePart, VideoPart))
    )


def test_the_same_media_after_other_words_reuses_its_encoding_and_keeps_the_new_prefix(tiny_adapter, reusing):
    engine, cache = reusing
    video = _identified(mixed_requests(new_tokens=NEW_TOKENS))[2].messages[0].content[0]

    def asking(question: str) -> GenerationRequest:  # the question first: every question its own prefix
        return GenerationRequest(messages=(ChatMessage("user", (TextPart(question), video)),), max_new_tokens=NEW_TOKENS)

    requests = [asking("What happens here?"), asking("Who is in it?")]
    plain = decode_in_batch(tiny_adapter.batch_engine(), requests, {0: [0], 1: [1]})

    assert decode_in_batch(engine, requests, {0: [0], 1: [1]}) == plain
    assert cache.stats.misses == 1 and cache.stats.hits == 1  # the second found the video's tower output
    assert cache.stats.entries == 3  # one tower output, two prefixes


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
    assert cache.stats.entries == 4 and cache.stats.hits == 0  # two tower outputs, two prefixes


def test_the_cache_gives_its_bytes_back_least_recently_used_first(reusing):
    engine, cache = reusing
    requests = _identified(mixed_requests(new_tokens=2))
    decode_in_batch(engine, requests, {0: [1], 1: [2], 2: [3]})
    held = cache.bytes
    assert cache.stats.entries == 6 and cache.media_ids()[0] == requests[3].media_ids[0]  # the most recent first

    freed = cache.give_back(1)  # the oldest: the first image's tower output

    assert 0 < freed < held and cache.bytes == held - freed and cache.stats.entries == 5
    assert cache.give_back(10 * held) == held - freed and cache.bytes == 0 and cache.stats.given_back == 6
    assert cache.media_ids() == []


def test_the_cache_keeps_nothing_beyond_the_room_it_is_given(tiny_adapter):
    engine = tiny_adapter.batch_engine()
    cache = MediaCache(64 * 1024**2, kind="encoder_outputs")
    engine.reuse_media(cache, room_bytes=lambda: 0)
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
    assert held > 0 and cache.stats.entries == 2  # its tower output and its prefix

    tight = scheduler(second_alone + held // 2)  # the second fits alone; beside the whole cache it would not
    try:
        result = answer_through(tight, second, timeout_s=60)
    finally:
        tight.close()

    assert result.completion_tokens == 2
    assert cache.stats.given_back == 2 and cache.stats.given_back_bytes == held
    assert tight.stats.request_ooms == 0


def test_two_questions_about_new_media_in_one_pass_encode_it_once(tiny_adapter, reusing):
    engine, cache = reusing
    request = _identified(mixed_requests(new_tokens=NEW_TOKENS))[2]
    plain = decode_in_batch(tiny_adapter.batch_engine(), [request, request], {0: [0, 1]})

    assert decode_in_batch(engine, [request, request], {0: [0, 1]}) == plain
    assert cache.stats.misses == 1 and cache.stats.hits == 1 and cache.stats.entries == 2
