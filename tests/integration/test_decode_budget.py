"""What one request may make the ingress decode, on real apps over HTTP: the decode budget on the audit's file
(an hour of 4K behind one keyframe), and a decode that stops when its client leaves."""

import base64
import time

import httpx
import psutil
import pytest
from polling import wait_for_condition
from ray import serve

from bench.hostile_media import sparse_keyframe_video
from integration.conftest import UPLOAD_DIR, deploy, serve_log_lines

pytestmark = pytest.mark.integration

APP_ARGS = {"gpu_group": {"enabled": False}, "cpu_group": {"num_cpus": 0.5}, "ingress": {"num_cpus": 0.25, "upload_dir": str(UPLOAD_DIR)}}
UNBOUNDED = "decode-unbounded"


@pytest.fixture(scope="module")
def budget_url(http_port):
    url = deploy(APP_ARGS, http_port, name="decode-budget", route_prefix="/budget")  # the default limits
    yield url
    serve.delete("decode-budget")


@pytest.fixture(scope="module")
def unbounded_url(http_port):
    limits = {"max_decoded_frames": 10**9, "max_decoded_pixels": 10**15}
    url = deploy({**APP_ARGS, "limits": limits}, http_port, name=UNBOUNDED, route_prefix="/unbounded")
    yield url
    serve.delete(UNBOUNDED)


@pytest.fixture(scope="module")
def hour_of_4k(tmp_path_factory) -> bytes:
    return sparse_keyframe_video(tmp_path_factory.mktemp("hostile") / "hour.mp4", seconds=3600).read_bytes()


def _analyze(url: str, video: bytes, frames: int, timeout_s: float) -> httpx.Response:
    parts = [("question", (None, "What happens?")), ("max_tokens", (None, "2")), ("frames", (None, str(frames))),
             ("video", ("hour.mp4", video, "video/mp4"))]
    return httpx.post(f"{url}/v1/analyze", files=parts, timeout=timeout_s)


def test_an_hour_of_4k_behind_one_keyframe_is_answered_from_one_decoded_frame(budget_url, hour_of_4k):
    # Unbudgeted, the 8th target (3375 s) was reached by decoding 101,000 4K frames: about an hour of CPU.
    response = _analyze(budget_url, hour_of_4k, frames=8, timeout_s=120)

    assert response.status_code == 200, response.text
    frames = response.json()["frames"]
    assert frames["decoded_frames"] == 1 and frames["decoded_pixels"] == 3840 * 2160
    assert frames["substituted"] == 8 and frames["timestamps_s"] == [0.0] * 8


def test_the_chat_route_decodes_within_the_same_budget(budget_url, hour_of_4k):
    url = "data:video/mp4;base64," + base64.b64encode(hour_of_4k).decode()
    chat = {"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                                      {"type": "text", "text": "What happens?"}]}], "max_tokens": 2}

    response = httpx.post(f"{budget_url}/v1/chat/completions", json=chat, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 2


def _ingress_process(app: str) -> psutil.Process:
    for process in psutil.process_iter(["cmdline"]):
        if any(f"ServeReplica:{app}:Ingress" in part for part in process.info["cmdline"] or ()):
            return process
    raise LookupError(f"no ingress replica process of {app}")


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def test_a_decode_stops_when_its_client_leaves(unbounded_url, tmp_path):
    # 30 minutes of 720p behind one keyframe, and no budget: the one target (900 s) is 27,000 frames away,
    # tens of seconds of the ingress's CPU. The client gives up after 2 s.
    video = sparse_keyframe_video(tmp_path / "long.mp4", width=1280, height=720, seconds=1800).read_bytes()
    ingress = _ingress_process(UNBOUNDED)

    with pytest.raises(httpx.TimeoutException):
        _analyze(unbounded_url, video, frames=1, timeout_s=2)
    left_at = time.monotonic()

    def idle() -> bool:
        before = _cpu_s(ingress)
        time.sleep(1.0)
        return _cpu_s(ingress) - before < 0.2

    wait_for_condition(idle, timeout_s=15, interval_s=0)
    (line,) = wait_for_condition(lambda: serve_log_lines(UNBOUNDED, "Decode stopped after"), timeout_s=10)
    stopped_after_frames = int(line.split("Decode stopped after ")[1].split()[0])
    assert 0 < stopped_after_frames < 27_000
    assert time.monotonic() - left_at < 16
    assert httpx.get(f"{unbounded_url}/healthz", timeout=10).status_code == 200
