"""``POST /v1/analyze`` end to end: real uploads over HTTP, real files in every format, the tiny model."""

import concurrent.futures
import json
import uuid

import httpx
import media_factory
import numpy as np
import pytest
from polling import wait_for_condition

from integration.conftest import UPLOAD_DIR, serve_log_lines

pytestmark = pytest.mark.integration

FOUR_SECONDS = media_factory.video_bytes("mp4", num_frames=48, fps=12)


@pytest.fixture(scope="module")
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


def _analyze(
    http: httpx.Client,
    video: bytes | None = FOUR_SECONDS,
    *,
    filename: str = "clip.mp4",
    part_type: str = "video/mp4",
    **fields,
) -> httpx.Response:
    data = {"question": "What happens in this video?", "max_tokens": "4", **fields}
    # Text fields as parts without a filename, so the body is multipart even with no file.
    parts = [(name, (None, value)) for name, value in data.items() if value is not None]
    if video is not None:
        parts.append(("video", (filename, video, part_type)))
    return http.post("/v1/analyze", files=parts)


@pytest.fixture(autouse=True)
def no_upload_left_behind():
    yield
    assert list(UPLOAD_DIR.iterdir()) == []


def test_a_video_and_a_question_get_an_answer_with_frames_timings_and_tokens(http):
    response = _analyze(http)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "video.analysis"
    assert isinstance(body["answer"], str)
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["frames"]["count"] == 4  # limits.video_frames in the test config
    assert body["frames"]["timestamps_s"] == pytest.approx([0.5, 1.5, 2.5, 3.5], abs=1 / 12)
    assert body["video"]["duration_s"] == pytest.approx(4.0)
    assert body["video"]["codec"] == "h264"
    assert body["video"]["size_bytes"] == len(FOUR_SECONDS)
    assert set(body["timings"]) == {"upload_s", "decode_s", "inference_s", "total_s"}
    assert 0 < body["timings"]["decode_s"] < body["timings"]["total_s"]
    assert 0 < body["timings"]["inference_s"] < body["timings"]["total_s"]
    usage = body["usage"]
    assert usage["prompt_tokens"] > 10 and 1 <= usage["completion_tokens"] <= 4
    assert body["served_by"]["group"] == "cpu"
    assert body["served_by"]["group"] == response.headers["x-served-by-group"]


def test_a_client_request_id_is_kept_and_tags_the_log_lines(http):
    trace = f"trace-{uuid.uuid4().hex}"
    response = http.post(
        "/v1/analyze",
        data={"question": "Anything?", "max_tokens": "2"},
        files={"video": ("clip.mp4", FOUR_SECONDS, "video/mp4")},
        headers={"x-request-id": trace},
    )

    assert response.headers["x-request-id"] == trace
    assert response.json()["request_id"] == trace
    (line,) = wait_for_condition(lambda: serve_log_lines(trace, "sampled to 4 frames"), timeout_s=30)
    assert "Ingress" in line  # Serve's replica log format: component, replica, request id, message


@pytest.mark.parametrize("kind", sorted(media_factory.VIDEO_KINDS))
def test_every_promised_format_is_answered(http, kind):
    video = media_factory.video_bytes(kind, num_frames=24, fps=12)

    response = _analyze(http, video, filename=f"clip.{kind}", part_type="application/octet-stream", frames="2")

    assert response.status_code == 200, response.text
    assert response.json()["frames"]["timestamps_s"] == pytest.approx([0.5, 1.5], abs=1 / 12)


def test_fps_sampling_is_capped_at_the_frame_limit(http):
    response = _analyze(http, fps="1")
    capped = _analyze(http, fps="30")

    assert response.json()["frames"]["timestamps_s"] == pytest.approx([0.0, 1.0, 2.0, 3.0], abs=1 / 12)
    assert capped.status_code == 200
    assert capped.json()["frames"]["count"] == 8  # limits.max_video_frames
    assert capped.json()["frames"]["effective_fps"] == pytest.approx(2.0)


def test_a_rotated_phone_video_reaches_the_model_upright(http):
    video = media_factory.video_bytes("mov", rotation_degrees=-90, width=64, height=32)

    body = _analyze(http, video, filename="phone.mov", frames="1").json()

    assert body["video"]["rotation_degrees"] == 270
    assert (body["frames"]["width"], body["frames"]["height"]) == (32, 64)


LONG = media_factory.video_bytes("mp4", num_frames=90, fps=1, width=32, height=32)
BIG_FRAMES = media_factory.video_bytes("mp4", num_frames=1, fps=1, width=1280, height=720)
ROTATED_GARBAGE = bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8))
_TRUNCATED_SOURCE = media_factory.video_bytes("mkv", num_frames=240, fps=12, width=64, height=64)
_CORRUPT = bytearray(media_factory.video_bytes("mkv", num_frames=48, fps=12, width=64, height=64))
_CORRUPT[len(_CORRUPT) // 4 : len(_CORRUPT) // 4 + len(_CORRUPT) // 2] = bytes(
    np.random.default_rng(0).integers(0, 256, len(_CORRUPT) // 2, dtype=np.uint8)
)
PROMPT_HEAVY = media_factory.video_bytes("mp4", num_frames=16, fps=4, width=448, height=448)

# (case, upload kwargs, status, code or None, words the message must hold)
BAD_UPLOADS = [
    ("upload over the byte limit", {"video": b"\0" * (1024 * 1024 + 1)}, 413, "upload_too_large", "1048576-byte limit"),
    ("video over the duration limit", {"video": LONG}, 413, "media_too_large", "90.0 s long; the limit is 60 s"),
    ("frames over the source pixel limit", {"video": BIG_FRAMES}, 413, "media_too_large", "1280x720 = 921600 pixels"),
    ("more frames than the limit", {"frames": "9"}, 400, None, "the limit is 8"),
    ("fps over the limit", {"fps": "31"}, 400, None, "the limit is 30"),
    ("frames and fps together", {"frames": "2", "fps": "1"}, 400, None, "either frames or fps"),
    ("zero frames asked", {"frames": "0"}, 400, None, "frames"),
    ("max_tokens over the limit", {"max_tokens": "4001"}, 400, None, "the limit is 4000"),
    ("question over the byte limit", {"question": "why? " * 500}, 413, None, "2048-byte limit"),
    ("empty question", {"question": "   "}, 400, None, "question is empty"),
    ("no question", {"question": None}, 400, None, "No question was sent"),
    ("prompt over the token limit", {"video": PROMPT_HEAVY, "frames": "8"}, 413, "prompt_too_long", "the limit is 250"),
    ("audio-only file", {"video": media_factory.audio_only_bytes()}, 400, "audio_only", "audio but no video stream"),
    ("zero-frame file", {"video": media_factory.empty_video_bytes("mp4")}, 400, "no_video_frames", "without a single frame"),
    ("truncated mp4", {"video": FOUR_SECONDS[: len(FOUR_SECONDS) // 2]}, 400, "not_a_video", "truncated"),
    ("truncated mkv", {"video": _TRUNCATED_SOURCE[: len(_TRUNCATED_SOURCE) // 3]}, 400, "truncated_video", "truncated"),
    ("corrupt packets", {"video": bytes(_CORRUPT)}, 400, "corrupt_video", "corrupt"),
    ("not a video at all", {"video": ROTATED_GARBAGE}, 400, "not_a_video", "does not open as a video"),
    ("empty file", {"video": b""}, 400, "not_a_video", "(0 bytes)"),
    ("text part type", {"part_type": "text/plain"}, 415, "unsupported_media_type", "send a video"),
    ("path in the filename", {"filename": "../../etc/passwd"}, 400, None, "path separators"),
    ("windows path in the filename", {"filename": "C:\\\\x\\\\clip.mp4"}, 400, None, "path separators"),
    ("no file", {"video": None}, 400, None, "No video was sent"),
    ("unknown field", {"colour": "red"}, 400, None, "Unknown form field 'colour'"),
    ("wrong model", {"model": "gpt-9"}, 404, "model_not_found", "not served here"),
    ("a window past the video's end", {"start_s": "5", "end_s": "6"}, 400, "video_window", "starts at 5 s; the video ends at 4 s"),
    ("a window that ends before it starts", {"start_s": "3", "end_s": "2"}, 400, None, "not after start_s"),
    ("a schema that is not JSON", {"json_schema": "{events"}, 400, None, "json_schema: not JSON"),
]


@pytest.mark.parametrize(("case", "kwargs", "status", "code", "words"), BAD_UPLOADS, ids=[case[0] for case in BAD_UPLOADS])
def test_each_bad_upload_gets_its_status_and_a_message_that_says_what_to_change(http, case, kwargs, status, code, words):
    response = _analyze(http, **kwargs)

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"]
    if code:
        assert error["code"] == code
    assert error["request_id"] == response.headers["x-request-id"]
    assert _analyze(http, frames="1").status_code == 200  # and the server goes on serving


def test_a_window_of_the_video_is_sampled_in_the_whole_video_s_clock_with_a_json_answer(http):
    schema = {"type": "object", "required": ["seen"], "properties": {"seen": {"type": "string", "maxLength": 8}}}
    response = _analyze(http, start_s="2", end_s="4", frames="2", max_tokens="40", json_schema=json.dumps(schema))

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["frames"]["timestamps_s"] == pytest.approx([2.5, 3.5], abs=1 / 12)
    assert set(json.loads(body["answer"])) == {"seen"}


def test_two_files_are_refused(http):
    files = [("video", ("a.mp4", FOUR_SECONDS, "video/mp4")), ("video", ("b.mp4", FOUR_SECONDS, "video/mp4"))]

    response = http.post("/v1/analyze", data={"question": "Which?"}, files=files)

    assert response.status_code == 400
    assert "More than one file" in response.json()["error"]["message"]


def test_a_json_body_is_refused_with_415(http):
    response = http.post("/v1/analyze", json={"question": "Where is the video?"})

    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["error"]["message"]


def test_an_upload_larger_than_the_limit_is_cut_off_while_it_streams(http):
    # No Content-Length: the size is only known as the bytes arrive.
    def body():
        boundary = b"--b0undary"
        yield boundary + b'\r\nContent-Disposition: form-data; name="question"\r\n\r\nHow long?\r\n'
        yield boundary + b'\r\nContent-Disposition: form-data; name="video"; filename="big.mp4"\r\nContent-Type: video/mp4\r\n\r\n'
        for _ in range(64):
            yield b"\0" * 65536  # 4 MiB in all, 4 times the limit
        yield b"\r\n" + boundary + b"--\r\n"

    response = http.post(
        "/v1/analyze", content=body(), headers={"content-type": "multipart/form-data; boundary=b0undary"}
    )

    assert response.status_code == 413
    assert "1048576-byte limit" in response.json()["error"]["message"]


def test_twenty_concurrent_requests_half_bad_leave_every_good_one_answered(http):
    bad_cases = [case for case in BAD_UPLOADS if case[2] != 404][:10]

    def good(index: int) -> httpx.Response:
        return _analyze(http, frames=str(1 + index % 4))

    def bad(index: int) -> tuple[int, httpx.Response]:
        _, kwargs, status, _, _ = bad_cases[index]
        return status, _analyze(http, **kwargs)

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        goods = [pool.submit(good, index) for index in range(10)]
        bads = [pool.submit(bad, index) for index in range(10)]
        good_responses = [future.result() for future in goods]
        bad_responses = [future.result() for future in bads]

    assert [response.status_code for response in good_responses] == [200] * 10
    assert [len(response.json()["frames"]["timestamps_s"]) for response in good_responses] == [1 + i % 4 for i in range(10)]
    assert [response.status_code for _, response in bad_responses] == [status for status, _ in bad_responses]


def _events(text: str) -> list[tuple[str, dict]]:
    """Named server-sent events as (name, JSON payload) pairs."""
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_a_streamed_analysis_sends_the_frames_first_then_text_then_the_whole_answer(http):
    fields = {"max_tokens": "6", "temperature": "1", "seed": "3"}
    plain = _analyze(http, **fields).json()

    response = _analyze(http, stream="true", thumbnails="true", **fields)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-served-by-group"] == "cpu"
    events = _events(response.text)
    names = [name for name, _ in events]
    assert names[0] == "start" and names[-1] == "done"
    assert set(names[1:-1]) == {"delta"} and 1 <= len(names) - 2 <= 6
    start, done = events[0][1], events[-1][1]
    assert start["frames"]["sampled_timestamps_s"] == plain["frames"]["timestamps_s"]
    assert len(start["frames"]["thumbnails"]) == 4
    assert all(url.startswith("data:image/jpeg;base64,") for url in start["frames"]["thumbnails"])
    assert start["served_by"]["group"] == "cpu"
    assert set(start["timings"]) == {"upload_s", "decode_s"}
    assert "".join(payload["text"] for name, payload in events if name == "delta") == done["answer"] == plain["answer"]
    assert done["usage"] == plain["usage"]
    assert done["frames"]["timestamps_s"] == plain["frames"]["timestamps_s"]
    assert "thumbnails" not in plain["frames"]  # only when asked


def test_bad_input_to_a_streamed_analysis_is_an_error_status_not_a_stream(http):
    response = _analyze(http, stream="true", frames="0")

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert "frames" in response.json()["error"]["message"]
    assert _analyze(http, stream="maybe").status_code == 400
