"""A GPU group on ``engine: vllm`` (vLLM's CPU build, in its own environment) through real Serve and HTTP.

The group runs its chain on the CPU (``device: cpu``) on a logical GPU against a probe file, beside a CPU group on
transformers. First the probe reports no free memory: vLLM's link is priced and skipped, the transformers links
too, and the CPU group serves every request. Then it reports 8 GiB free: the replica starts vLLM, and the same
routes, parameters and cancellation go through it. The session's app (transformers only, same limits) answers
the same requests for the same-frames, same-prompt comparison.

Needs vLLM's environment (``bin/ensure-vllm-venv``, which ``bin/test`` runs); skipped with that message without it.
"""

import base64
import json

import httpx
import media_factory
import openai
import psutil
import pytest
from polling import wait_for_condition
from ray import serve

from integration.conftest import TEST_APP_ARGS, deploy
from memory.probe import FileGpu
from models.engines.vllm import DEFAULT_VLLM_PYTHON

pytestmark = [pytest.mark.integration, pytest.mark.vllm]

GIB = 1024**3
APP = "vllm-engine"
MODEL_ID = "tiny-qwen2-vl"
FOUR_SECONDS = media_factory.video_bytes("mp4", num_frames=48, fps=12)
IMAGE = "data:image/png;base64," + base64.b64encode(media_factory.image_bytes("png")).decode()


@pytest.fixture(scope="module")
def probe(test_root):
    path = test_root / "gpu-probe-vllm.json"
    FileGpu.write(path, total_bytes=8 * GIB, free_bytes=0)
    return path


@pytest.fixture(scope="module")
def vllm_url(http_port, probe):
    if not DEFAULT_VLLM_PYTHON.is_file():
        pytest.skip(f"vLLM's environment is not built ({DEFAULT_VLLM_PYTHON}): run bin/ensure-vllm-venv")
    args = {
        **TEST_APP_ARGS,
        "gpu_group": {
            "device": "cpu", "engine": "vllm", "num_cpus": 1, "num_gpus": 0.5, "chain": ["fp32"],
            "load_retry_period_s": 1, "env_vars": {"VIDEO_DETECTIVE_GPU_PROBE_FILE": str(probe)},
        },
        "cpu_group": {"num_cpus": 0.5},
        "routing": {"gpu_timeout_s": 60, "breaker_cooldown_s": 2},
        "ingress": {**TEST_APP_ARGS["ingress"], "readiness_cache_s": 0},
    }
    url = deploy(args, http_port, name=APP, route_prefix="/vllm")
    wait_for_condition(lambda: httpx.get(f"{url}/readyz", timeout=30).json()["groups"]["cpu"]["status"] == "up",
                       timeout_s=120)
    yield url
    serve.delete(APP)


@pytest.fixture(scope="module")
def client(vllm_url):
    return openai.OpenAI(base_url=f"{vllm_url}/v1", api_key="unused", max_retries=0, timeout=120)


def _gpu_replica(url: str) -> dict:
    (replica,) = httpx.get(f"{url}/v1/memory", timeout=30).json()["groups"]["gpu"]
    return replica


def _chat(client, content, **kwargs):
    return client.chat.completions.with_raw_response.create(
        model=MODEL_ID, messages=[{"role": "user", "content": content}], **{"max_tokens": 4, **kwargs}
    )


# -- 1. No memory for vLLM: priced and skipped; the transformers CPU group serves. --------------


def test_without_the_memory_vllm_is_skipped_by_its_price_and_the_cpu_group_serves(vllm_url, client):
    wait_for_condition(lambda: _gpu_replica(vllm_url)["state"] == "waiting_for_memory", timeout_s=180)
    replica = _gpu_replica(vllm_url)
    assert replica["engine"]["engine"] == "vllm"
    attempts = replica["load_report"]["attempts"]
    assert [attempt["strategy"] for attempt in attempts] == ["vllm-fp32", "fp32"]
    assert {attempt["outcome"] for attempt in attempts} == {"skipped"}
    assert attempts[0]["estimate_bytes"] > 2 * GIB  # vLLM's processes and its smallest KV cache are priced

    groups = [_chat(client, f"request {index}").headers["x-served-by-group"] for index in range(5)]
    assert groups == ["cpu"] * 5


# -- 2. The memory is there: vLLM starts and serves. ---------------------------------------------


def test_when_the_budget_allows_vllm_starts_and_serves_the_gpu_group(vllm_url, client, probe):
    FileGpu.write(probe, total_bytes=8 * GIB, free_bytes=8 * GIB)

    wait_for_condition(lambda: _gpu_replica(vllm_url)["state"] == "ready", timeout_s=300)
    replica = _gpu_replica(vllm_url)
    assert replica["precision"] == "vllm-fp32", replica["load_report"]
    # The router hears of the replica's readiness within a routing-stats period.
    wait_for_condition(lambda: _chat(client, "Who answers?").headers["x-served-by-group"] == "gpu", timeout_s=30)
    assert _chat(client, "Who answers?").headers["x-served-by-precision"] == "vllm-fp32"
    assert replica["engine"]["running"] == "vllm"
    assert replica["model"]["memory_plan"]["kv_cache_bytes"] >= replica["model"]["memory_plan"]["min_kv_cache_bytes"]
    # The planner's choice, with its reason: compiled on the CPU (vllm_compile: auto), its graphs cached.
    assert replica["model"]["compile"]["mode"] == "compiled"
    assert replica["model"]["compile"]["reason"].startswith("vllm_compile: auto on the CPU: compiled")
    assert replica["batching"]["engine"] == "vllm"
    assert set(replica["batching"]["vllm"]) >= {"kv_cache_usage", "running", "waiting", "prefix_cache_hit_rate"}


@pytest.mark.parametrize("stream", [False, True])
def test_text_image_and_video_through_the_openai_route(vllm_url, client, stream):
    video = "data:video/mp4;base64," + base64.b64encode(FOUR_SECONDS).decode()
    contents = {
        "text": "Describe the scene.",
        "image": [{"type": "image_url", "image_url": {"url": IMAGE}}, {"type": "text", "text": "What is it?"}],
        "video": [{"type": "video_url", "video_url": {"url": video}}, {"type": "text", "text": "What happens?"}],
    }
    prompt_tokens = {}
    for kind, content in contents.items():
        if stream:
            with client.chat.completions.with_streaming_response.create(
                model=MODEL_ID, messages=[{"role": "user", "content": content}], max_tokens=4, stream=True,
                stream_options={"include_usage": True},
            ) as response:
                assert response.headers["x-served-by-group"] == "gpu"
                chunks = list(response.parse())
            assert chunks[-1].usage.completion_tokens == 4
            prompt_tokens[kind] = chunks[-1].usage.prompt_tokens
        else:
            raw = _chat(client, content)
            assert raw.headers["x-served-by-group"] == "gpu"
            completion = raw.parse()
            assert completion.choices[0].finish_reason == "length"
            assert completion.usage.completion_tokens == 4
            prompt_tokens[kind] = completion.usage.prompt_tokens
    assert prompt_tokens["text"] < prompt_tokens["image"] < prompt_tokens["video"]


def _analyze(url: str) -> dict:
    response = httpx.post(
        f"{url}/v1/analyze", timeout=120,
        data={"question": "What happens in this video?", "max_tokens": "4"},
        files={"video": ("clip.mp4", FOUR_SECONDS, "video/mp4")},
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_the_same_video_gives_both_engines_the_same_frames_and_the_same_prompt(vllm_url, base_url):
    on_vllm, on_transformers = _analyze(vllm_url), _analyze(base_url)

    assert on_vllm["served_by"]["precision"] == "vllm-fp32"
    assert on_transformers["served_by"]["precision"] == "fp32"
    assert on_vllm["frames"]["timestamps_s"] == on_transformers["frames"]["timestamps_s"]
    assert on_vllm["frames"]["count"] == 4
    assert on_vllm["usage"]["prompt_tokens"] == on_transformers["usage"]["prompt_tokens"]


def test_the_same_video_has_the_same_identity_on_both_engines_and_a_hit_answers_as_the_miss(vllm_url, base_url):
    vllm_before = _gpu_replica(vllm_url)["batching"]["media_cache"]
    first, second = _analyze(vllm_url), _analyze(vllm_url)
    on_transformers = _analyze(base_url)

    vllm_ids = _gpu_replica(vllm_url)["cached_media"]
    transformers_ids = {media_id for replica in httpx.get(f"{base_url}/v1/memory", timeout=30).json()["groups"]["cpu"]
                        for media_id in replica["cached_media"]}
    assert vllm_ids[0] in transformers_ids  # the upload's bytes, frame times and size: one identity, any engine
    assert first["answer"] == second["answer"]  # temperature 0: vLLM's caches keyed on it give the answer again
    assert first["usage"] == second["usage"] == on_transformers["usage"]
    after = _gpu_replica(vllm_url)["batching"]
    # Both found it: the test before asked about this video too.
    assert after["media_cache"]["hits"] == vllm_before["hits"] + 2 and after["media_cache"]["kind"] == "vllm"
    assert after["vllm"]["processor_cache_hits"] >= 1  # vLLM's own processor cache found the item by our identity


# -- 3. Parameters: honoured through vLLM's sampling parameters, or refused by name. ------------


def test_stop_logprobs_n_and_seed_are_honoured(client):
    varied = {"temperature": 1.0, "seed": 5, "max_tokens": 12, "extra_body": {"ignore_eos": True}}
    first, second = (_chat(client, "Describe the scene.", **varied).parse() for _ in range(2))
    assert first.choices[0].message.content == second.choices[0].message.content  # the seed decides the sample
    text = first.choices[0].message.content
    assert len(text) >= 2

    stopped = _chat(client, "Describe the scene.", stop=[text[1]], **varied).parse()
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(text[1])]

    with_logprobs = _chat(client, "Describe the scene.", logprobs=True, top_logprobs=2, **varied).parse()
    tokens = with_logprobs.choices[0].logprobs.content
    assert len(tokens) == 12
    assert all(len(token.top_logprobs) == 2 and token.logprob <= 0 for token in tokens)

    two = _chat(client, "Describe the scene.", n=2, **varied).parse()
    assert [choice.index for choice in two.choices] == [0, 1]
    assert two.usage.completion_tokens == 24


# A schema whose every answer is short: the random model cannot run out of tokens inside a string.
COUNT_SCHEMA = {
    "type": "object",
    "properties": {"seen": {"type": "boolean"}, "people": {"enum": ["none", "one", "many"]}},
    "required": ["seen", "people"],
    "additionalProperties": False,
}


def test_a_json_schema_is_honoured_through_vllms_structured_output(client):
    response_format = {"type": "json_schema", "json_schema": {"name": "count", "schema": COUNT_SCHEMA}}
    for seed in range(3):
        completion = _chat(client, "Who is there?", max_tokens=64, temperature=1.0, seed=seed,
                           response_format=response_format).parse()
        answer = json.loads(completion.choices[0].message.content)
        assert set(answer) == {"seen", "people"}
        assert isinstance(answer["seen"], bool) and answer["people"] in ("none", "one", "many")
    as_object = _chat(client, "Who?", max_tokens=64, temperature=1.0, seed=1, response_format={"type": "json_object"})
    assert as_object.parse().choices[0].message.content.startswith("{")


def test_a_schema_that_compiles_too_slowly_is_refused_before_vllm_sees_it(client):
    # Two patterns of 480 repeated groups (200 bytes): about 4 s in xgrammar, which vLLM would spend, unbounded.
    pattern = {"type": "string", "pattern": "^([a-z]{1,50}[0-9]{1,50}){1,480}$"}
    schema = {"type": "object", "properties": {"a": pattern, "b": pattern}}
    response_format = {"type": "json_schema", "json_schema": {"name": "slow", "schema": schema}}

    with pytest.raises(openai.BadRequestError) as refused:
        _chat(client, "Hi", response_format=response_format)

    assert "(limits.max_schema_compile_s)" in refused.value.message
    assert refused.value.body["param"] == "response_format"
    assert _chat(client, "Hi").headers["x-served-by-group"] == "gpu"


def test_a_parameter_not_honoured_is_refused_by_name_and_the_next_request_is_served(client):
    with pytest.raises(openai.BadRequestError) as refused:
        _chat(client, "Hi", tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])

    assert refused.value.status_code == 400
    assert refused.value.body["param"] == "tools"
    assert _chat(client, "Hi").headers["x-served-by-group"] == "gpu"


# -- 4. A client that leaves aborts its request inside vLLM. --------------------------------------


def test_a_client_that_leaves_aborts_its_request_in_vllm(vllm_url):
    before = _gpu_replica(vllm_url)["batching"]["cancelled"]
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Go on."}], "max_tokens": 4000,
            "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{vllm_url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.headers["x-served-by-group"] == "gpu"
        for index, _ in enumerate(response.iter_lines()):
            if index >= 3:
                break

    wait_for_condition(lambda: _gpu_replica(vllm_url)["batching"]["cancelled"] == before + 1, timeout_s=30)
    replica = _gpu_replica(vllm_url)
    assert replica["batching"]["last_cancelled_tokens"] < 4000
    wait_for_condition(lambda: _gpu_replica(vllm_url)["batching"]["vllm"]["running"] == 0, timeout_s=30)


def test_a_prompt_over_the_limit_is_a_413_naming_the_figures_and_the_next_request_is_served(client):
    with pytest.raises(openai.APIStatusError) as refused:
        _chat(client, "the quick brown fox " * 60)

    assert refused.value.status_code == 413  # as on the transformers engine
    assert "the limit is 250" in refused.value.message  # limits.max_prompt_tokens in the test config
    assert _chat(client, "Hi").headers["x-served-by-group"] == "gpu"


# -- 5. A dead engine fails health; the CPU group answers until Serve has replaced the replica. ----


def _engine_cores() -> list[psutil.Process]:
    cores = []
    for process in psutil.process_iter(["cmdline"]):
        if any("EngineCore" in part for part in process.info["cmdline"] or ()):
            cores.append(process)
    return cores


def test_a_dead_vllm_engine_fails_health_the_cpu_group_answers_and_serve_replaces_the_replica(vllm_url, client):
    before = _gpu_replica(vllm_url)["replica"]
    (core,) = _engine_cores()
    core.kill()

    answers = []
    wait_for_condition(lambda: answers.append(_chat(client, "Still there?").headers["x-served-by-group"]) or
                       answers[-1] == "cpu", timeout_s=60)
    assert set(answers) <= {"gpu", "cpu"}
    # Health fails on the dead engine; Serve starts a new replica, which starts vLLM again.
    wait_for_condition(lambda: _gpu_replica(vllm_url)["replica"] != before, timeout_s=120)
    wait_for_condition(lambda: _gpu_replica(vllm_url)["state"] == "ready", timeout_s=300)
    wait_for_condition(lambda: _chat(client, "Back?").headers["x-served-by-precision"] == "vllm-fp32", timeout_s=60)
