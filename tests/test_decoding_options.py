"""Every decoding option on a real replica of the tiny model, in this process: values, not just shapes.

The tiny model is random-weight, so the tests compare an option's answer with the plain answer of the
same request (greedy unless said), or check a property the option must give whatever the weights.
"""

import asyncio
import json

import pytest
from events_schema import EVENTS_SCHEMA
from polling import wait_for_condition

from deployments.config.app_config import load_app_config
from deployments.plan import resolve_app
from deployments.replica.model_replica import ModelReplica
from models.errors import InvalidParameterError
from models.requests import ChatMessage, DecodingOptions, GenerationRequest, ResponseFormat, TextDelta, TextPart

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def replica():
    replica = ModelReplica(resolve_app(load_app_config({"limits": {"max_tokens": 512}})), "cpu")
    wait_for_condition(lambda: replica.describe()["state"] == "ready", timeout_s=60)
    yield replica
    replica.close()


def _request(max_new_tokens=12, temperature=0.0, seed=None, text="Describe the scene.", **options) -> GenerationRequest:
    return GenerationRequest(
        messages=(ChatMessage("user", (TextPart(text),)),),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        options=DecodingOptions(**options),
    )


def _answer(replica, **kwargs):
    return asyncio.run(replica.generate(_request(**kwargs)))


def _streamed(replica, **kwargs) -> tuple[list[TextDelta], object]:
    async def collect():
        deltas, answer = [], None
        async for item in replica.generate_stream(_request(**kwargs)):
            if isinstance(item, TextDelta):
                deltas.append(item)
            elif hasattr(item, "result"):
                answer = item
        return deltas, answer

    return asyncio.run(collect())


def test_a_stop_string_ends_the_answer_just_before_it_streamed_or_not(replica):
    varied = {"temperature": 1.0, "seed": 3, "ignore_eos": True, "max_new_tokens": 16}  # seeded: the same each time
    plain = _answer(replica, **varied).result.text
    stop = plain[4:6]
    assert len(stop) == 2 and plain.index(stop) < len(plain) - 2

    whole = _answer(replica, stop=(stop,), **varied).result
    deltas, streamed = _streamed(replica, stop=(stop,), **varied)

    assert whole.text == plain[: plain.index(stop)]
    assert whole.finish_reason == "stop"
    assert "".join(delta.text for delta in deltas) == whole.text == streamed.result.text
    assert stop not in "".join(delta.text for delta in deltas)


def test_logprobs_are_the_models_own_and_the_greedy_token_is_the_most_likely(replica):
    result = _answer(replica, max_new_tokens=5, logprobs=True, top_logprobs=3).result

    assert len(result.logprobs) == result.completion_tokens == 5
    for entry in result.logprobs:
        top = [logprob for _, logprob in entry.top]
        assert len(top) == 3 and top == sorted(top, reverse=True)
        assert entry.logprob == pytest.approx(top[0]) and entry.top[0][0] == entry.token  # greedy
        assert entry.logprob < 0


def test_streamed_logprobs_cover_every_token_once(replica):
    deltas, answer = _streamed(replica, max_new_tokens=6, logprobs=True, top_logprobs=1)

    streamed = [entry for delta in deltas for entry in delta.logprobs]
    assert streamed == list(answer.result.logprobs)
    assert len(streamed) == answer.result.completion_tokens


def test_a_logit_bias_of_100_makes_every_token_that_token(replica):
    token = 42
    result = _answer(replica, max_new_tokens=6, logit_bias=((token, 100.0),), logprobs=True).result
    named = replica._engine._steps.tokenizer.decode([token])

    assert [entry.token for entry in result.logprobs] == [named] * 6


def test_ignore_eos_runs_to_max_tokens_and_min_tokens_holds_the_end_back(replica):
    eos = min(replica._engine._steps.eos_ids)
    ends_at_once = _answer(replica, logit_bias=((eos, 100.0),)).result
    held = _answer(replica, logit_bias=((eos, 100.0),), min_tokens=5).result
    ignored = _answer(replica, max_new_tokens=9, logit_bias=((eos, 100.0),), ignore_eos=True).result

    assert (ends_at_once.completion_tokens, ends_at_once.finish_reason) == (1, "stop")
    assert (held.completion_tokens, held.finish_reason) == (6, "stop")  # 5 tokens, then the end token
    assert (ignored.completion_tokens, ignored.finish_reason) == (9, "length")


def test_penalties_make_a_repetitive_answer_less_repetitive(replica):
    plain = _answer(replica, max_new_tokens=16, logprobs=True).result
    penalised = _answer(replica, max_new_tokens=16, logprobs=True, frequency_penalty=2.0, presence_penalty=2.0).result
    repetition = _answer(replica, max_new_tokens=16, logprobs=True, repetition_penalty=5.0).result

    def distinct(result) -> int:
        return len({entry.token for entry in result.logprobs})

    assert distinct(plain) <= 2  # the random model repeats one token
    assert distinct(penalised) > 8 and distinct(repetition) > 8


@pytest.mark.parametrize("cut", [{"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}])
def test_a_cut_to_the_single_most_likely_token_samples_the_greedy_answer(replica, cut):
    greedy = _answer(replica, ignore_eos=True, logit_bias=((7, 6.0),)).result.text
    sampled = [_answer(replica, temperature=1.0, seed=seed, ignore_eos=True, logit_bias=((7, 6.0),), **cut).result.text
               for seed in range(3)]
    free = [_answer(replica, temperature=1.0, seed=seed, ignore_eos=True, logit_bias=((7, 6.0),)).result.text
            for seed in range(3)]

    assert sampled == [greedy] * 3
    assert free != [greedy] * 3  # without the cut, temperature 1 samples something else


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_json_schema_answer_parses_and_validates_even_on_a_random_model(replica, temperature):
    response_format = ResponseFormat("json_schema", json.dumps(EVENTS_SCHEMA, sort_keys=True))
    for seed in range(5):
        result = _answer(replica, max_new_tokens=64, temperature=temperature, seed=seed, response_format=response_format).result

        answer = json.loads(result.text)
        assert result.finish_reason == "stop"
        assert set(answer) == {"events"} and isinstance(answer["events"], list)
        for event in answer["events"]:
            assert set(event) == {"t", "what"}
            assert isinstance(event["t"], (int, float)) and isinstance(event["what"], str)


def test_a_json_object_answer_is_an_object(replica):
    for seed in range(5):
        result = _answer(replica, max_new_tokens=32, temperature=1.0, seed=seed,
                         response_format=ResponseFormat("json_object")).result

        assert isinstance(json.loads(result.text), dict)


def test_a_schema_that_does_not_compile_and_a_token_past_the_vocabulary_are_refused_by_name(replica):
    with pytest.raises(InvalidParameterError, match="does not compile") as bad_schema:
        _answer(replica, response_format=ResponseFormat("json_schema", '{"type": "nonsense"}'))
    with pytest.raises(InvalidParameterError, match="token ids are 0 to") as bad_token:
        _answer(replica, logit_bias=((10**6, 1.0),))

    assert bad_schema.value.param == "response_format"
    assert bad_token.value.param == "logit_bias"
    assert _answer(replica).result.completion_tokens >= 1  # and the replica goes on serving
