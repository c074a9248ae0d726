"""Out of memory at request time, through real Serve and HTTP: smaller retries on the GPU group, then
a hand-off to the CPU group, and the GPU replica serves on.

The GPU group runs its chain on the CPU (``gpu_group.device: cpu``) against a probe file that reports
a free GPU; ``VIDEO_DETECTIVE_SIMULATE_OOM_ABOVE_PIXELS`` makes its generation raise CUDA's
out-of-memory error above a media size, at the generate boundary, as a full GPU would.
"""

import base64

import httpx
import media_factory
import pytest
import ray
from polling import wait_for_condition
from ray import serve

from integration.conftest import deploy, oom_drill_args, serve_log_lines
from memory.probe import FileGpu

pytestmark = pytest.mark.integration

GIB = 1024**3


@pytest.fixture(scope="module")
def oom_url(http_port, test_root):
    probe = test_root / "gpu-probe-oom.json"
    FileGpu.write(probe, total_bytes=8 * GIB, free_bytes=8 * GIB)
    args = oom_drill_args(probe)
    url = deploy(args, http_port, name="oom", route_prefix="/oom")
    with httpx.Client(base_url=url, timeout=60) as client:
        text_only = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        wait_for_condition(
            lambda: client.post("/v1/chat/completions", json=text_only).headers.get("x-served-by-group") == "gpu",
            timeout_s=120,
        )
    yield url
    serve.delete("oom")


def test_a_video_too_big_for_the_gpu_replica_is_answered_there_with_fewer_smaller_frames(oom_url):
    video = media_factory.video_bytes("mp4", num_frames=48, fps=12)  # 8 frames of 64x48 = 24576 pixels

    response = httpx.post(
        f"{oom_url}/v1/analyze",
        data={"question": "What happens?", "max_tokens": "2"},
        files={"video": ("clip.mp4", video, "video/mp4")},
        timeout=60,
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["served_by"]["group"] == "gpu"
    retries = body["out_of_memory_retries"]
    assert [(r["before"]["video_frames"], r["after"]["video_frames"]) for r in retries] == [(8, 4), (4, 2)]
    assert body["frames"]["sampled_count"] == 8
    assert body["frames"]["count"] == 2
    assert body["frames"]["timestamps_s"] == [0.25, 3.75]
    assert body["frames"]["pixels_per_frame_used"] * 2 <= 5000
    # Each step is logged on the replica with its numbers, under the request's id.
    lines = wait_for_condition(
        lambda: serve_log_lines(response.headers["x-request-id"], "ran out of memory at"), timeout_s=30
    )
    assert any("at 8 frames, 3072 pixels per frame" in line and "retrying with 4 frames" in line for line in lines)


def test_past_the_floor_the_cpu_group_answers_and_the_gpu_group_keeps_serving(oom_url):
    # Six images: even at the 1000-pixel floor they hold 6000 pixels, over the 5000 the GPU replica "has".
    image = "data:image/png;base64," + base64.b64encode(media_factory.image_bytes("PNG", width=64, height=48)).decode()
    content = [{"type": "image_url", "image_url": {"url": image}} for _ in range(6)] + [{"type": "text", "text": "Same?"}]
    with httpx.Client(base_url=oom_url, timeout=60) as client:
        handed_off = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}], "max_tokens": 2})
        after = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        memory = client.get("/v1/memory").json()

    assert handed_off.status_code == 200, handed_off.text
    assert handed_off.headers["x-served-by-group"] == "cpu"
    assert after.headers["x-served-by-group"] == "gpu"  # one oversized request does not open the breaker
    assert memory["gpu_breaker"] == "closed"
    (gpu,) = memory["groups"]["gpu"]
    assert gpu["state"] == "ready"
    assert gpu["request_out_of_memory"] >= 3


def test_each_out_of_memory_step_is_counted_in_prometheus(oom_url):
    port = ray._private.worker.global_worker.node.metrics_export_port

    def counted() -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        totals: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("ray_vd_request_out_of_memory_total{") and 'group="gpu"' in line:
                outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
                totals[outcome] = totals.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
        return totals if {"retry_smaller", "handed_off"} <= set(totals) else {}

    totals = wait_for_condition(counted, timeout_s=90, interval_s=2)
    assert totals["retry_smaller"] >= 2 + 2  # two steps for the video, two for the images before the floor
    assert totals["handed_off"] >= 1
