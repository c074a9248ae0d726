"""The HTTP contract, end to end: real Ray Serve, real HTTP, the real tiny model."""

import base64
import concurrent.futures
import json

import httpx
import media_factory
import openai
import pytest

pytestmark = pytest.mark.integration

MODEL_ID = "tiny-qwen2-vl"


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


PNG_URL = _data_url("image/png", media_factory.image_bytes("PNG", width=96, height=64))
MP4_URL = _data_url("video/mp4", media_factory.video_bytes("mp4", num_frames=24, fps=12))
WEBM_URL = _data_url("video/webm", media_factory.video_bytes("webm", num_frames=24, fps=12))
TINY_VIDEO_URL = _data_url("video/mp4", media_factory.video_bytes("mp4", num_frames=4, fps=4, width=32, height=32))
# 600x500 scales to the 448x448 pixel budget: 256 visual tokens, over the tests' 250-token prompt limit.
BIG_PNG_URL = _data_url("image/png", media_factory.image_bytes("PNG", width=600, height=500, noise=False))


def _chat(content, **extra) -> dict:
    return {"model": MODEL_ID, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


GOOD_REQUEST = _chat("Say something.")


@pytest.fixture(scope="module")
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def _assert_completion_shape(body: dict, max_tokens: int) -> None:
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == MODEL_ID
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    usage = body["usage"]
    assert 1 <= usage["completion_tokens"] <= max_tokens
    assert choice["finish_reason"] == ("length" if usage["completion_tokens"] == max_tokens else "stop")
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_healthz(http):
    response = http.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_models_lists_the_served_model(client):
    assert [model.id for model in client.models.list().data] == [MODEL_ID]


def test_text_chat_over_httpx(http):
    response = http.post("/v1/chat/completions", json=GOOD_REQUEST)

    assert response.status_code == 200, response.text
    _assert_completion_shape(response.json(), max_tokens=4)
    assert response.headers["x-served-by-group"] == "cpu"
    assert response.headers["x-served-by-precision"] == "fp32"
    assert response.headers["x-served-by-replica"]
    assert response.headers["x-request-id"]


def test_an_image_costs_more_prompt_tokens_than_text_alone(http):
    text_only = http.post("/v1/chat/completions", json=_chat([{"type": "text", "text": "What is this?"}])).json()

    with_image = http.post(
        "/v1/chat/completions",
        json=_chat([{"type": "image_url", "image_url": {"url": PNG_URL}}, {"type": "text", "text": "What is this?"}]),
    )

    assert with_image.status_code == 200, with_image.text
    # 96 x 64 -> smart_resize to 84 x 56 -> 6 x 4 patches of 14 -> 6 merged 2 x 2 tokens + vision start/end.
    assert with_image.json()["usage"]["prompt_tokens"] - text_only["usage"]["prompt_tokens"] == 6 + 2


@pytest.mark.parametrize("video_url", [MP4_URL, WEBM_URL], ids=["mp4", "webm"])
def test_video_through_the_openai_client(client, video_url):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL_ID,
        max_tokens=3,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": video_url}},
                    {"type": "text", "text": "What happens?"},
                ],
            }
        ],
    )
    completion = raw.parse()

    assert raw.headers["x-served-by-group"] == "cpu"
    assert completion.model == MODEL_ID
    assert 1 <= completion.usage.completion_tokens <= 3
    # 4 frames of 64 x 48 -> smart_resize to 56 x 56 -> 2 temporal x (2 x 2 merged) = 8 video tokens + start/end.
    text_only = client.chat.completions.create(
        model=MODEL_ID, max_tokens=1, messages=[{"role": "user", "content": [{"type": "text", "text": "What happens?"}]}]
    )
    assert completion.usage.prompt_tokens - text_only.usage.prompt_tokens == 2 * 2 * 2 + 2


def test_image_through_the_openai_client_with_a_system_prompt(client):
    completion = client.chat.completions.create(
        model=MODEL_ID,
        max_tokens=2,
        temperature=0,
        messages=[
            {"role": "system", "content": "You describe images."},
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": PNG_URL}}, {"type": "text", "text": "Describe."}],
            },
        ],
    )

    assert completion.choices[0].message.role == "assistant"
    assert completion.usage.prompt_tokens > 10


def test_greedy_answers_repeat(http):
    first = http.post("/v1/chat/completions", json=_chat("Repeat after me.", temperature=0)).json()
    second = http.post("/v1/chat/completions", json=_chat("Repeat after me.", temperature=0)).json()

    assert first["choices"][0]["message"] == second["choices"][0]["message"]


BAD_INPUTS = {
    "malformed JSON": ({"content": b'{"messages": [', "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    "empty body": ({"content": b"", "headers": {"content-type": "application/json"}}, 400, "empty"),
    "not JSON content type": ({"content": b"messages=1", "headers": {"content-type": "text/plain"}}, 415, "application/json"),
    "missing messages": ({"json": {"model": MODEL_ID}}, 422, "messages: Field required"),
    "empty messages": ({"json": {"messages": []}}, 422, "messages"),
    "unknown content part": ({"json": _chat([{"type": "audio_url", "audio_url": {"url": "x"}}])}, 422, "audio_url"),
    "remote URL": (
        {"json": _chat([{"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data"}}])},
        400,
        "Only data URLs are accepted",
    ),
    "server file path": ({"json": _chat([{"type": "video_url", "video_url": {"url": "/etc/passwd"}}])}, 400, "Only data URLs"),
    "invalid base64": ({"json": _chat([{"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}}])}, 400, "does not decode"),
    "unsupported image type": (
        {"json": _chat([{"type": "image_url", "image_url": {"url": _data_url("image/gif", b"GIF89a")}}])},
        415,
        "image/gif",
    ),
    "undecodable image": (
        {"json": _chat([{"type": "image_url", "image_url": {"url": _data_url("image/png", b"\x89PNG garbage")}}])},
        400,
        "Image does not decode",
    ),
    "undecodable video": (
        {"json": _chat([{"type": "video_url", "video_url": {"url": _data_url("video/mp4", b"\0\0\0\x18ftypmp42" * 20)}}])},
        400,
        "does not open as a video container",
    ),
    "audio-only video": (
        {"json": _chat([{"type": "video_url", "video_url": {"url": _data_url("video/mp4", media_factory.audio_only_bytes())}}])},
        400,
        "no video stream",
    ),
    "image over the pixel limit": (
        {"json": _chat([{"type": "image_url", "image_url": {"url": _data_url("image/png", media_factory.image_bytes("PNG", width=1100, height=1000, noise=False))}}])},
        413,
        "the limit is 1000000 pixels",
    ),
    "body over the byte limit": ({"json": _chat("x" * (3 * 1024 * 1024))}, 413, "the limit is 2097152 bytes"),
    "a chunked body over the byte limit (read whole before)": (
        {"content": (b'{"messages": "' + b"x" * 65536 if i == 0 else b"x" * 65536 for i in range(48)),
         "headers": {"content-type": "application/json"}},
        413,
        "reading stopped at",
    ),
    "60,000 one-letter messages (built whole before)": (
        {"content": b'{"max_tokens": 2, "messages": [' + b",".join([b'{"role":"user","content":"a"}'] * 60_000) + b"]}",
         "headers": {"content-type": "application/json"}},
        400,
        "more than 12352 JSON objects",
    ),
    "images that decode to more pixels than a request may (budgeted after scaling before)": (
        {"json": _chat([{"type": "image_url", "image_url": {"url": _data_url(
            "image/png", media_factory.image_bytes("PNG", width=1000, height=1000, noise=False))}}] * 3)},
        413,
        "hold 3000000 pixels at their stored size; the limit is 2500000",
    ),
    "too many content parts": ({"json": _chat([{"type": "text", "text": "a"}] * 17)}, 413, "17 parts; the limit is 16"),
    "too many messages": (
        {"json": {"messages": [{"role": "user", "content": "hi"}] * 65, "max_tokens": 2}},
        413,
        "65 messages; the limit is 64",
    ),
    "prompt over the token limit": ({"json": _chat("describe the river " * 200)}, 413, "the limit is 250"),
    "prompt over the token limit, streamed": ({"json": _chat("describe the river " * 200, stream=True)}, 413, "the limit is 250"),
    "video over the duration limit": (
        {"json": _chat([{"type": "video_url", "video_url": {"url": _data_url("video/mp4", media_factory.video_bytes("mp4", num_frames=61, fps=1, width=32, height=32))}}])},
        413,
        "the limit is 60 s",
    ),
    "video frames over the pixel limit": (
        {"json": _chat([{"type": "video_url", "video_url": {"url": _data_url("video/mp4", media_factory.video_bytes("mp4", num_frames=1, fps=1, width=1280, height=720))}}])},
        413,
        "1280x720 = 921600 pixels",
    ),
    "max_tokens over the limit": ({"json": _chat("hi", max_tokens=100_000)}, 400, "the limit is 4000"),
    "max_tokens of zero": ({"json": _chat("hi", max_tokens=0)}, 422, "max_tokens"),
    "temperature out of range": ({"json": _chat("hi", temperature=7)}, 422, "temperature"),
    "more choices than the limit": ({"json": _chat("hi", n=9)}, 400, "n: 9 choices asked; the limit is 8"),
    "tool calling": ({"json": _chat("hi", tools=[{"type": "function", "function": {"name": "f"}}])}, 400, "tools: tool calling"),
    "an unknown parameter": ({"json": _chat("hi", temprature=0.5)}, 400, "temprature: unknown parameter"),
    "media in a system message": (
        {"json": {"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": PNG_URL}}]}]}},
        400,
        "only user messages",
    ),
    "JSON nested 1000 deep": (
        {"content": b'{"messages": ' + b"[" * 1000 + b"]" * 1000 + b"}", "headers": {"content-type": "application/json"}},
        400,
        "deeper than 400 levels",
    ),
    "JSON nested 401 deep": (
        {"content": b'{"messages": ' + b"[" * 400 + b"]" * 400 + b"}", "headers": {"content-type": "application/json"}},
        400,
        "deeper than 400 levels",
    ),
    "a TGA file declared PNG": (
        {"json": _chat([{"type": "image_url", "image_url": {"url": _data_url("image/png", media_factory.image_bytes("TGA"))}}])},
        400,
        "not PNG, JPEG or WebP",
    ),
    "a GIF declared MP4": (
        {"json": _chat([{"type": "video_url", "video_url": {"url": _data_url("video/mp4", media_factory.image_bytes("GIF"))}}])},
        400,
        "MP4/MOV, WebM/Matroska and AVI",
    ),
    "a seed past 64 bits": ({"json": _chat("hi", seed=2**70)}, 422, "seed"),
    "a negative seed": ({"json": _chat("hi", seed=-1)}, 422, "seed"),
    "more media parts than a request may hold": (
        {"json": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG_URL}}] * 12}] * 3}},
        413,
        "36 image and video parts; the limit is 32 per request",
    ),
    "more frames than a request may decode": (
        {"json": {"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": TINY_VIDEO_URL}}] * 6}] * 3}},
        413,
        "18 videos would decode 72 frames; the limit is 64 frames per request",
    ),
    "media whose visual tokens alone pass the prompt limit": (
        {"json": _chat([{"type": "image_url", "image_url": {"url": BIG_PNG_URL}}] * 3)},
        413,
        "alone would be",
    ),
    "image too thin for the model": (
        {"json": _chat([{"type": "image_url", "image_url": {"url": _data_url("image/png", media_factory.image_bytes("PNG", width=900, height=2))}}])},
        400,
        "aspect ratio",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_gets_a_clear_error_and_the_next_request_is_served(http, case):
    request_kwargs, status, fragment = BAD_INPUTS[case]

    response = http.post("/v1/chat/completions", **request_kwargs)

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"]
    assert "Traceback" not in response.text
    assert error["request_id"] == response.headers["x-request-id"]
    follow_up = http.post("/v1/chat/completions", json=GOOD_REQUEST)
    assert follow_up.status_code == 200, follow_up.text


@pytest.mark.parametrize(
    ("header", "value"), [("x-request-timeout-seconds", "0"), ("X-Request-Timeout-Seconds", "99999"), ("x-request-disconnect-disabled", "?1")]
)
def test_a_client_cannot_lift_the_proxys_timeout_or_disconnect_handling(http, header, value):
    """Serve's proxy obeys these before the app sees the request; the ingress ends such a request at once."""
    response = http.post("/v1/chat/completions", json={**GOOD_REQUEST, "stream": True}, headers={header: value})

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("proxy_header_refused", header.lower())
    assert "trusted proxy in front of Serve" in error["message"]
    assert http.post("/v1/chat/completions", json=GOOD_REQUEST).status_code == 200


def test_unknown_model_is_404_through_the_openai_client(client):
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


def test_unknown_route_is_a_json_404(http):
    response = http.get("/v2/nothing")

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


def test_wrong_method_is_a_json_405(http):
    response = http.get("/v1/chat/completions")

    assert response.status_code == 405
    assert "GET /v1/chat/completions" in response.json()["error"]["message"]


def test_concurrent_good_and_bad_requests_leave_every_good_one_answered(base_url):
    bad = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!"}}]}]}

    def send(index: int) -> tuple[int, int]:
        payload = GOOD_REQUEST if index % 2 == 0 else bad
        with httpx.Client(base_url=base_url, timeout=120) as session:
            return index, session.post("/v1/chat/completions", content=json.dumps(payload), headers={"content-type": "application/json"}).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        results = dict(pool.map(send, range(20)))

    assert {index: status for index, status in results.items() if index % 2 == 0} == {i: 200 for i in range(0, 20, 2)}
    assert {index: status for index, status in results.items() if index % 2 == 1} == {i: 400 for i in range(1, 20, 2)}


def test_the_replica_loaded_through_the_chain_and_reports_memory(base_url):
    from ray import serve

    from integration.conftest import APP_NAME

    description = serve.get_deployment_handle("cpu_group", APP_NAME).describe.remote().result(timeout_s=60)

    report = description["load_report"]
    assert report["precision"] == description["precision"] == "fp32"
    (attempt,) = report["attempts"]
    assert attempt["outcome"] == "loaded"
    assert attempt["measured_bytes"] == attempt["estimate_bytes"] > 0
    assert attempt["budget_bytes"] > attempt["estimate_bytes"]
    assert description["memory"]["process_rss_bytes"] > 0
    assert description["memory"]["gpus"] == []  # CUDA_VISIBLE_DEVICES="" for the CPU group
    # Set through the replica's runtime_env before torch started, and read back inside it.
    assert description["allocator"]["requested"] == {"expandable_segments": "True"}
    assert description["allocator"]["matches"] is True


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/redoc"])
def test_the_api_description_is_off_by_default(base_url, path):
    response = httpx.get(f"{base_url}{path}", timeout=30)

    assert response.status_code == 404
