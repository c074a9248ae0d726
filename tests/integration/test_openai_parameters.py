"""Every chat parameter through the official ``openai`` client, streamed and not: honoured, or refused by name.

Real Ray Serve, real HTTP, the real tiny model. The model is random-weight, so answers are compared
with the plain answer of the same seeded request, or checked for what the parameter must give.
"""

import json

import httpx
import openai
import pytest
import transformers
from events_schema import EVENTS_SCHEMA

from integration.conftest import serve_log_lines

pytestmark = pytest.mark.integration

MODEL_ID = "tiny-qwen2-vl"
MESSAGES = [{"role": "user", "content": "Describe the scene."}]
# Seeded sampling that never ends early: a varied answer, the same every time.
VARIED = {"temperature": 1.0, "seed": 3, "max_tokens": 16, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def _create(client, **kwargs):
    return client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, **kwargs)


def _stream(client, **kwargs) -> list:
    return list(_create(client, stream=True, **kwargs))


def _streamed_text(chunks, index: int = 0) -> str:
    return "".join(
        choice.delta.content or "" for chunk in chunks for choice in chunk.choices if choice.index == index
    )


def _finish_reasons(chunks) -> dict[int, str]:
    return {choice.index: choice.finish_reason for chunk in chunks for choice in chunk.choices if choice.finish_reason}


def _answer(client, stream: bool, **kwargs) -> tuple[str, str, int]:
    """(text, finish_reason, completion tokens) of one choice, streamed or not."""
    if not stream:
        completion = _create(client, **kwargs)
        return completion.choices[0].message.content, completion.choices[0].finish_reason, completion.usage.completion_tokens
    chunks = _stream(client, stream_options={"include_usage": True}, **kwargs)
    return _streamed_text(chunks), _finish_reasons(chunks)[0], chunks[-1].usage.completion_tokens


def test_stop_ends_the_answer_before_the_stop_string_streamed_or_not(client):
    plain = _create(client, **VARIED).choices[0].message.content
    stop = plain[4:6]

    whole = _create(client, stop=[stop], **VARIED).choices[0]
    chunks = _stream(client, stop=stop, **VARIED)

    assert whole.message.content == plain[: plain.index(stop)]
    assert whole.finish_reason == "stop"
    assert _streamed_text(chunks) == whole.message.content
    assert _finish_reasons(chunks) == {0: "stop"}


def test_logprobs_in_openais_shape_streamed_or_not(client):
    whole = _create(client, max_tokens=4, logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    chunks = _stream(client, max_tokens=4, logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})

    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens == 4
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy: the most likely
        assert entry.bytes == list(entry.token.encode())
    streamed = [entry for chunk in chunks for choice in chunk.choices if choice.logprobs for entry in choice.logprobs.content]
    assert [(entry.token, entry.logprob) for entry in streamed] == [(entry.token, entry.logprob) for entry in content]


def test_no_logprobs_unless_asked(client):
    assert _create(client, max_tokens=2).choices[0].logprobs is None


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("cut", [{"top_p": 1e-6}, {"extra_body": {"top_k": 1, "ignore_eos": True}},
                                 {"extra_body": {"min_p": 1.0, "ignore_eos": True}}])
def test_a_cut_to_one_token_samples_the_greedy_answer(client, cut, stream):
    cut = dict(cut)
    greedy = _create(client, max_tokens=8, extra_body={"ignore_eos": True}).choices[0].message.content
    extra = cut.pop("extra_body", {"ignore_eos": True})

    sampled, _, _ = _answer(client, stream, max_tokens=8, temperature=1.0, seed=5, extra_body=extra, **cut)
    free = _create(client, max_tokens=8, temperature=1.0, seed=5, extra_body={"ignore_eos": True}).choices[0].message.content

    assert sampled == greedy
    assert free != greedy


@pytest.mark.parametrize("stream", [False, True])
def test_penalties_change_a_repetitive_answer(client, stream):
    def distinct_tokens(**kwargs) -> int:
        kwargs = {"max_tokens": 12, "logprobs": True, **kwargs}
        kwargs["extra_body"] = {"ignore_eos": True, **kwargs.get("extra_body", {})}
        if stream:
            entries = [entry for chunk in _stream(client, **kwargs) for choice in chunk.choices
                       if choice.logprobs for entry in choice.logprobs.content]
        else:
            entries = _create(client, **kwargs).choices[0].logprobs.content
        assert len(entries) == 12
        return len({entry.token for entry in entries})

    assert distinct_tokens() <= 2
    assert distinct_tokens(frequency_penalty=2.0, presence_penalty=2.0) > 6
    assert distinct_tokens(extra_body={"repetition_penalty": 5.0}) > 6


@pytest.mark.parametrize("stream", [False, True])
def test_max_completion_tokens_min_tokens_logit_bias_and_seed(client, tiny_model_path, stream):
    end_token = _end_token_ids(tiny_model_path)[0]
    _, capped_reason, capped_tokens = _answer(client, stream, max_completion_tokens=7, extra_body={"ignore_eos": True})
    first, _, _ = _answer(client, stream, **VARIED)
    again, _, _ = _answer(client, stream, **VARIED)
    other, _, _ = _answer(client, stream, **{**VARIED, "seed": 4})
    _, ends_reason, ends_tokens = _answer(client, stream, max_tokens=20, logit_bias={str(end_token): 100})
    _, held_reason, held_tokens = _answer(client, stream, max_tokens=20, logit_bias={str(end_token): 100},
                                          extra_body={"min_tokens": 5})

    assert (capped_tokens, capped_reason) == (7, "length")
    assert first == again != other
    assert (ends_tokens, ends_reason) == (1, "stop")
    assert (held_tokens, held_reason) == (6, "stop")  # 5 tokens, then the end


def _end_token_ids(model_path) -> list[int]:
    ids = transformers.GenerationConfig.from_pretrained(model_path).eos_token_id
    return [ids] if isinstance(ids, int) else list(ids)


def test_n_choices_in_one_call_streamed_or_not(client):
    whole = _create(client, n=3, **VARIED)
    chunks = _stream(client, n=2, stream_options={"include_usage": True}, **VARIED)

    assert [choice.index for choice in whole.choices] == [0, 1, 2]
    texts = [choice.message.content for choice in whole.choices]
    assert len(set(texts)) == 3  # seeds 3, 4, 5
    assert texts[0] == _create(client, **VARIED).choices[0].message.content  # choice 0 is the seed's own answer
    assert whole.usage.completion_tokens == 3 * 16
    assert [_streamed_text(chunks, index) for index in (0, 1)] == texts[:2]
    assert _finish_reasons(chunks) == {0: "length", 1: "length"}
    assert chunks[-1].usage.completion_tokens == 2 * 16


@pytest.mark.parametrize("stream", [False, True])
def test_a_json_schema_response_format_parses_and_validates(client, stream):
    response_format = {"type": "json_schema", "json_schema": {"name": "events", "schema": EVENTS_SCHEMA}}
    for seed in range(3):
        kwargs = {"max_tokens": 64, "temperature": 1.0, "seed": seed, "response_format": response_format}
        text = _streamed_text(_stream(client, **kwargs)) if stream else _create(client, **kwargs).choices[0].message.content

        answer = json.loads(text)
        assert isinstance(answer["events"], list)
        assert all(set(event) == {"t", "what"} for event in answer["events"])


def test_a_json_object_response_format_is_an_object(client):
    answer = _create(client, max_tokens=32, temperature=1.0, seed=1, response_format={"type": "json_object"})

    assert isinstance(json.loads(answer.choices[0].message.content), dict)


def test_user_is_recorded_in_the_logs(client):
    _create(client, max_tokens=2, user="analyst-7")

    assert serve_log_lines("is from user", "analyst-7")


def _nested_schema(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


REFUSED = {
    "tools": ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools", "tool calling"),
    "audio": ({"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"]}, "audio", "audio output"),
    "an unknown parameter": ({"extra_body": {"frobnicate": 1}}, "frobnicate", "unknown parameter"),
    "five stop strings": ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    "an empty stop string": ({"stop": [""]}, "stop", "empty string"),
    "top_logprobs without logprobs": ({"top_logprobs": 2}, "top_logprobs", "needs logprobs"),
    "a schema that does not compile": (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
        "response_format", "does not compile",
    ),
    "an enum of 50,000 strings (compiled for two minutes, then a 503)": (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"a": {"enum": [f"v{i}" for i in range(50_000)]}}}}}},
        "response_format", "limits.max_schema_bytes",
    ),
    "an enum of 600 values": (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"enum": list(range(600))}}}},
        "response_format", "600 enum and const values; the limit is 512",
    ),
    "a schema 190 objects deep (380 JSON levels, under the body's 400)": (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": _nested_schema(190)}}},
        "response_format", "limits.max_schema_depth",
    ),
    "a 200-byte schema that compiles for seconds (two patterns of 480 repeated groups)": (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {
            name: {"type": "string", "pattern": "^([a-z]{1,50}[0-9]{1,50}){1,480}$"} for name in "ab"}}}}},
        "response_format", "within 1.5 s (limits.max_schema_compile_s)",
    ),
    "json_schema without a schema": ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
                                     "response_format", "needs"),
    "a token past the vocabulary": ({"logit_bias": {"9999999": 5}}, "logit_bias", "token ids are 0 to"),
    "a token id that is not a number": ({"logit_bias": {"hello": 5}}, "logit_bias", "not a token id"),
    "a token id in superscript digits (was a 500)": ({"logit_bias": {"\u00b2": 1}}, "logit_bias", "not a token id"),
    "a token id with a leading zero": ({"logit_bias": {"01": 1}}, "logit_bias", "not a token id"),
    "301 logit_bias entries": ({"logit_bias": {str(token): 1 for token in range(301)}}, "logit_bias", "at most 300"),
    "too many choices": ({"n": 9}, "n", "the limit is 8"),
    "min_tokens over max_tokens": ({"max_tokens": 4, "extra_body": {"min_tokens": 9}}, "min_tokens", "more than max_tokens"),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_a_parameter_not_honoured_is_a_400_that_names_it_and_the_next_request_is_served(client, case):
    kwargs, param, fragment = REFUSED[case]

    with pytest.raises(openai.BadRequestError) as refused:
        _create(client, **{"max_tokens": 2, **kwargs})

    assert refused.value.status_code == 400
    assert refused.value.body["param"] == param
    assert fragment in refused.value.body["message"]
    assert _create(client, max_tokens=2).choices[0].message.role == "assistant"


def test_off_values_of_refused_parameters_pass(client):
    answer = _create(client, max_tokens=2, extra_body={"tools": None, "store": False, "modalities": ["text"]})

    assert answer.choices[0].finish_reason in ("stop", "length")


def test_the_routes_clients_probe(base_url, client):
    health = httpx.get(f"{base_url}/health", timeout=30)
    model = client.models.retrieve(MODEL_ID)
    listed = client.models.list().data[0]
    version = httpx.get(f"{base_url}/version", timeout=30).json()

    assert health.status_code == 200 and health.json()["status"] in ("ready", "degraded")
    # limits.max_prompt_tokens + limits.max_tokens (4250), capped by the tiny model's positions: the plan's, as vLLM's
    assert model.id == MODEL_ID and model.max_model_len == 4096
    assert listed.max_model_len == model.max_model_len
    assert version["version"] and version["ray"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_continuous_usage_stats_puts_the_usage_so_far_in_every_chunk(client):
    chunks = _stream(client, max_tokens=6, extra_body={"ignore_eos": True},
                     stream_options={"include_usage": True, "continuous_usage_stats": True})

    final = chunks[-1].usage
    counted = [chunk.usage.completion_tokens for chunk in chunks if chunk.choices and chunk.usage is not None]
    assert counted == sorted(counted) and counted[-1] == final.completion_tokens == 6
    assert {chunk.usage.prompt_tokens for chunk in chunks if chunk.usage is not None} == {final.prompt_tokens}


def test_an_unknown_stream_option_is_named(client):
    with pytest.raises(openai.UnprocessableEntityError, match="stream_options.every_token"):
        _stream(client, max_tokens=2, stream_options={"every_token": True})
