"""``stream: true`` on /v1/chat/completions: server-sent chunks the ``openai`` client reads, and a
client that disconnects stops the generation on the replica."""

import base64

import httpx
import media_factory
import openai
import pytest
from polling import wait_for_condition
from ray import serve

from integration.conftest import APP_NAME

pytestmark = pytest.mark.integration

MODEL_ID = "tiny-qwen2-vl"
VIDEO_URL = "data:video/webm;base64," + base64.b64encode(media_factory.video_bytes("webm", num_frames=24, fps=12)).decode()
MESSAGES = [
    {
        "role": "user",
        "content": [{"type": "video_url", "video_url": {"url": VIDEO_URL}}, {"type": "text", "text": "What moves?"}],
    }
]


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_the_openai_client_reads_a_streamed_video_answer_equal_to_the_unstreamed_one(client):
    whole = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=12)

    chunks = list(
        client.chat.completions.create(
            model=MODEL_ID, messages=MESSAGES, max_tokens=12, stream=True, stream_options={"include_usage": True}
        )
    )

    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(chunk.model == MODEL_ID and chunk.id == chunks[0].id for chunk in chunks)
    streamed_text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed_text == whole.choices[0].message.content  # greedy: the same answer
    finish = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_a_stream_says_who_serves_it(base_url):
    with httpx.stream(
        "POST", f"{base_url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 3, "stream": True}, timeout=60
    ) as response:
        lines = [line for line in response.iter_lines() if line]

    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-served-by-group"] == "cpu"
    assert "x-request-id" in response.headers
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_bad_input_on_a_stream_is_an_error_status_before_any_event(base_url):
    response = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "https://evil.example/x.mp4"}}]}], "stream": True},
        timeout=60,
    )

    assert response.status_code == 400
    assert "Only data URLs are accepted" in response.json()["error"]["message"]


def test_a_client_that_disconnects_stops_the_generation(base_url):
    cpu_group = serve.get_deployment_handle("cpu_group", APP_NAME)
    cancelled_before = cpu_group.describe.remote().result(timeout_s=30)["streams_cancelled"]
    max_tokens = 4000  # the tiny model never stops on its own: only cancellation ends it early

    with httpx.stream(
        "POST",
        f"{base_url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Talk for a long time."}], "max_tokens": max_tokens, "stream": True},
        timeout=60,
    ) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert next(lines) == ""
    # Leaving the block closes the connection after the first event.

    def cancelled() -> dict | None:
        description = cpu_group.describe.remote().result(timeout_s=30)
        done = description["streams_cancelled"] > cancelled_before and description["last_cancelled_stream_tokens"] is not None
        return description if done else None

    description = wait_for_condition(cancelled, timeout_s=60)
    assert description["last_cancelled_stream_tokens"] < max_tokens
    # The replica serves on.
    assert httpx.post(f"{base_url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2}, timeout=60).status_code == 200
