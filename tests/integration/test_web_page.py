"""The page at ``/`` and the memory view at ``/ui/memory``, driven in a real Chromium as a person would.

The app under test is the session's (CPU group serving, 1 MiB upload limit) and, for the memory view,
an app with API keys on whose GPU group runs its chain on the CPU against a probe file: memory short,
then freed, then short again (the drill the replica-group tests use). Screenshots go to the test folder.
"""

import concurrent.futures
import os
import pathlib

import httpx
import media_factory
import pytest
from browser import launch_chromium
from playwright.sync_api import expect, sync_playwright
from ray import serve

from integration.conftest import deploy
from memory.probe import FileGpu

pytestmark = pytest.mark.integration

GIB = 1024**3
KEY = "vd-page-key-0123456789"
QUESTION = "What colour is the video at the start?"


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], f"the page raised: {errors}"


@pytest.fixture(scope="module")
def shots(test_root):
    """Screenshots in the test folder, or in ``VIDEO_DETECTIVE_SCREENSHOTS`` to keep them (the README's and docs/operations.md's come from there)."""
    folder = pathlib.Path(os.environ.get("VIDEO_DETECTIVE_SCREENSHOTS") or test_root / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def clip(test_root):
    path = test_root / "page-clip.mp4"
    path.write_bytes(media_factory.video_bytes(num_frames=48, fps=12, width=160, height=120))
    return path


def _ask(page, question: str, *, frames: int = 4, max_tokens: int = 6, temperature: str = "", seed: str = "") -> None:
    page.fill("#question", question)
    page.fill("#frames", str(frames))
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#temperature", temperature)
    page.fill("#seed", seed)
    page.click("#ask-button")


def test_the_page_is_static_with_a_policy_that_allows_only_its_own_scripts(base_url):
    response = httpx.get(f"{base_url}/", timeout=30)

    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert "unsafe-inline" not in policy
    assert "<script>" not in response.text  # no inline script: every script is a file of its own
    assert httpx.get(f"{base_url}/ui/static/ask.js", timeout=30).headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{base_url}/ui/static/..%2Fingress.py", timeout=30).status_code == 404
    missing = httpx.get(f"{base_url}/ui/static/index.html", timeout=30)  # pages are served at their routes only
    assert missing.status_code == 404
    assert "no such file" in missing.json()["error"]["message"]


def test_asking_about_a_video_streams_the_answer_with_the_frames_it_saw(base_url, page, clip, shots):
    page.goto(f"{base_url}/")
    page.set_input_files("#media-input", str(clip))
    _ask(page, QUESTION, max_tokens=12, temperature="1", seed="7")

    expect(page.locator("#finish")).to_contain_text("finish: length", timeout=60_000)
    page.screenshot(path=str(shots / "ask-video.png"), full_page=True)

    # The answer came in pieces (at most one per token) and is the one the non-streamed route gives.
    assert 2 <= int(page.locator("#answer").get_attribute("data-pieces")) <= 12
    file_id = page.locator("#video-facts tr:has(th:text('file id')) td").text_content()
    fields = {"file_id": file_id, "question": QUESTION, "frames": "4", "max_tokens": "12", "temperature": "1", "seed": "7"}
    plain = httpx.post(
        f"{base_url}/v1/analyze", files={name: (None, value) for name, value in fields.items()}, timeout=60
    ).json()
    assert page.locator("#answer").text_content() == plain["answer"]
    # The thumbnails are the frames the model saw, with their timestamps.
    captions = page.locator("#thumbnails figcaption").all_text_contents()
    assert captions == [f"{stamp:.2f} s" for stamp in plain["frames"]["timestamps_s"]]
    assert page.locator("#thumbnails img").first.evaluate("image => image.naturalWidth") == 160
    served = dict(zip(page.locator("#served-facts th").all_text_contents(), page.locator("#served-facts td").all_text_contents()))
    assert served["group"] == "cpu" and served["precision"] == plain["served_by"]["precision"]
    video = page.locator("#video-facts").text_content()
    assert "160 x 120" in video and "4.00 s" in video and "mov / h264" in video
    timings = page.locator("#timing-facts th").all_text_contents()
    assert {"upload_s", "decode_s", "inference_s", "total_s", "first text (page)"} <= set(timings)
    assert page.locator("#oom-retries").text_content() == "none"
    assert page.locator("#upload-progress").evaluate("bar => bar.value") == 1


def test_a_second_question_reuses_the_uploaded_file(base_url, page, clip):
    page.goto(f"{base_url}/")
    page.set_input_files("#media-input", str(clip))
    _ask(page, QUESTION)
    expect(page.locator("#finish")).to_contain_text("finish", timeout=60_000)
    before = {record["id"] for record in httpx.get(f"{base_url}/v1/files", timeout=30).json()["data"]}

    _ask(page, "And at the end?")
    expect(page.locator("#upload-text")).to_contain_text("Reusing the uploaded file file-", timeout=30_000)
    expect(page.locator("#finish")).to_contain_text("finish", timeout=60_000)

    after = {record["id"] for record in httpx.get(f"{base_url}/v1/files", timeout=30).json()["data"]}
    assert after == before  # no second upload
    assert page.locator("#timing-facts tr:has(th:text('frame_cache')) td").text_content() == "hit"


def test_an_oversized_file_shows_the_servers_413_message(base_url, page, test_root, shots):
    big = test_root / "too-big.mp4"
    big.write_bytes(b"\0" * (1024 * 1024 + 4096))  # over the test app's 1 MiB limits.max_upload_bytes
    page.goto(f"{base_url}/")
    page.set_input_files("#media-input", str(big))
    _ask(page, QUESTION)

    expect(page.locator("#error-box")).to_contain_text("413", timeout=60_000)
    page.screenshot(path=str(shots / "ask-413.png"), full_page=True)
    assert "limits.max_upload_bytes" in page.locator("#error-box").text_content()
    assert page.locator("#ask-button").is_enabled()
    assert page.locator("#result").is_hidden()  # the error alone, no empty answer


def test_markup_from_the_server_is_shown_as_text(base_url, page, test_root):
    named = test_root / "<img src=x id=injected>.mp4"
    named.write_bytes(media_factory.video_bytes(num_frames=12))
    page.goto(f"{base_url}/")
    page.set_input_files("#media-input", str(named))
    _ask(page, QUESTION, max_tokens=2)

    expect(page.locator("#finish")).to_contain_text("finish", timeout=60_000)
    assert "<img src=x id=injected>.mp4" in page.locator("#video-facts").text_content()
    assert page.locator("#injected").count() == 0


def test_asking_about_images_streams_a_chat_answer(base_url, page, test_root):
    paths = []
    for index in range(2):
        path = test_root / f"page-image-{index}.png"
        path.write_bytes(media_factory.image_bytes("PNG", width=64, height=48, seed=index))
        paths.append(str(path))
    page.goto(f"{base_url}/")
    page.set_input_files("#media-input", paths)
    _ask(page, "What differs between the images?", max_tokens=5)

    expect(page.locator("#finish")).to_contain_text("answer tokens", timeout=60_000)
    assert page.locator("#thumbnails img").count() == 2
    expect(page.locator("#finish")).to_contain_text(", 5 answer tokens")
    # Streamed (more than one piece); pieces that reach the replica's loop together cross as one message.
    assert 2 <= int(page.locator("#answer").get_attribute("data-pieces")) <= 5
    assert page.locator("#served-facts tr:has(th:text('group')) td").text_content() == "cpu"


# -- The memory view, with keys on, while the GPU group fails and recovers. -----------------


@pytest.fixture(scope="module")
def drill_probe(test_root):
    path = test_root / "page-gpu-probe.json"
    FileGpu.write(path, total_bytes=8 * GIB, free_bytes=0)
    return path


@pytest.fixture(scope="module")
def drill_url(http_port, drill_probe, test_root):
    keys_file = test_root / "page-api-keys"
    keys_file.write_text(f"{KEY}\n")
    args = {
        "gpu_group": {
            "device": "cpu",
            "num_cpus": 0.5,
            "load_retry_period_s": 0.5,
            "health_check_period_s": 1,
            "env_vars": {"VIDEO_DETECTIVE_GPU_PROBE_FILE": str(drill_probe)},
        },
        "cpu_group": {"num_cpus": 0.5},
        "routing": {"gpu_timeout_s": 10, "breaker_cooldown_s": 1},
        "auth": {"api_keys_file": str(keys_file)},
    }
    url = deploy(args, http_port, name="page-drill", route_prefix="/page-drill")
    yield url
    serve.delete("page-drill")


def _unload_gpu_replicas(app_name: str) -> None:
    """The operator's unload, from a thread of its own: playwright's sync API runs an event loop in this one."""
    def unload() -> None:
        serve.get_deployment_handle("gpu_group", app_name).unload.remote().result(timeout_s=30)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(unload).result(timeout=60)


def test_the_memory_view_asks_for_the_key_and_follows_the_gpu_group_down_and_up(drill_url, drill_probe, page, shots):
    page.goto(f"{drill_url}/ui/memory")
    expect(page.locator("#key-panel")).to_be_visible(timeout=30_000)
    expect(page.locator("#error-box")).to_contain_text("401", timeout=10_000)  # set once the body is read, after the panel
    page.fill("#api-key", KEY)
    page.click("#key-form button")

    gpu_card = page.locator("article.card[data-group=gpu]")
    cpu_card = page.locator("article.card[data-group=cpu]")
    expect(gpu_card).to_have_attribute("data-state", "waiting_for_memory", timeout=60_000)
    expect(cpu_card).to_have_attribute("data-state", "ready")
    assert "No loading strategy fits" in gpu_card.text_content()
    assert page.evaluate("sessionStorage.length") == 1 and page.evaluate("localStorage.length") == 0
    page.screenshot(path=str(shots / "memory-gpu-short.png"), full_page=True)

    # Another process exits: the probe reports the memory free, and the GPU group loads by itself.
    FileGpu.write(drill_probe, total_bytes=8 * GIB, free_bytes=8 * GIB)
    expect(gpu_card).to_have_attribute("data-state", "ready", timeout=60_000)
    expect(gpu_card.locator(".timeline li").last).to_contain_text("loaded")
    assert gpu_card.locator(".bar .segment").count() == 4
    page.screenshot(path=str(shots / "memory-gpu-ready.png"), full_page=True)

    # Memory is taken again and the replica lets its model go: Serve replaces it, and the new one waits.
    FileGpu.write(drill_probe, total_bytes=8 * GIB, free_bytes=0)
    _unload_gpu_replicas("page-drill")
    expect(gpu_card).not_to_have_attribute("data-state", "ready", timeout=60_000)
    expect(gpu_card).to_have_attribute("data-state", "waiting_for_memory", timeout=90_000)
    # The key was sent as a Bearer token all along: the page never fell back to the key panel.
    assert page.locator("#key-panel").is_hidden()


def test_the_whole_video_mode_fills_a_timeline_as_segments_land_and_a_row_jumps_the_player(base_url, page, test_root, shots):
    video = test_root / "page-forty-seconds.webm"  # VP9: every Chromium build plays it
    video.write_bytes(media_factory.video_bytes("webm", num_frames=80, fps=2, gop=4, width=160, height=120))
    page.goto(f"{base_url}/")
    page.set_input_files("#media-input", str(video))
    page.check("input[name=mode][value=job]")
    page.fill("#segment-s", "10")
    page.fill("#frames", "2")
    page.fill("#seed", "3")
    page.fill("#question", "What happens?")
    page.click("#ask-button")

    card = page.locator("article.job")
    expect(card.locator("li.job-segment").first).to_be_visible(timeout=120_000)  # rows appear before the job ends
    expect(card).to_have_attribute("data-ended", "succeeded", timeout=180_000)
    page.screenshot(path=str(shots / "ask-whole-video.png"), full_page=True)

    job = httpx.get(f"{base_url}/v1/video/jobs/{card.get_attribute('data-job-id')}", timeout=30).json()
    assert card.locator(".job-state").text_content() == "succeeded"
    assert card.locator(".job-progress").evaluate("bar => [bar.value, bar.max]") == [4, 4]
    rows = card.locator("li.job-segment")
    assert rows.evaluate_all("rows => rows.map(row => Number(row.dataset.time))") == [0, 10, 20, 30]
    assert rows.locator("> button img").count() == 4  # each segment's thumbnail
    assert card.locator("li.job-event").count() == len(job["timeline"])
    assert card.locator(".job-answer").text_content() == job["final"]["answer"]

    rows.nth(2).locator("> button").click()
    player = card.locator(".job-player")
    expect(card).to_have_attribute("data-jumped-to", "20")
    assert player.evaluate("video => video.currentTime") == pytest.approx(20, abs=0.6)
    assert not card.locator(".job-cancel").is_enabled()


def test_a_job_named_in_the_address_is_shown_and_an_event_jumps_the_player_to_its_time(base_url, page, test_root):
    video = media_factory.video_bytes("webm", num_frames=40, fps=2, gop=4, width=160, height=120)  # 20 s
    file_id = httpx.post(f"{base_url}/v1/files", data={"purpose": "vision"}, timeout=30,
                         files={"file": ("twenty.webm", video, "video/webm")}).json()["id"]
    # The default events schema with at least one event a segment: the random model then always reports one.
    schema = {"type": "object", "required": ["events"], "properties": {"events": {
        "type": "array", "minItems": 1, "maxItems": 2, "items": {
            "type": "object", "required": ["time_s", "description"],
            "properties": {"time_s": {"type": "number"}, "description": {"type": "string", "maxLength": 20}}}}}}
    job = httpx.post(f"{base_url}/v1/video/jobs", timeout=30, json={
        "file_id": file_id, "question": "What happens?", "segment_s": 10, "frames": 2, "json_schema": schema,
        "max_tokens": 200}).json()

    page.goto(f"{base_url}/?job={job['id']}")

    card = page.locator("article.job")
    expect(card).to_have_attribute("data-ended", "succeeded", timeout=180_000)
    ended = httpx.get(f"{base_url}/v1/video/jobs/{job['id']}", timeout=30).json()
    events = card.locator("li.job-event")
    assert events.count() == len(ended["timeline"]) >= 2
    assert events.evaluate_all("rows => rows.map(row => Number(row.dataset.time))") == [
        event["time_s"] for event in ended["timeline"]]
    last = ended["timeline"][-1]
    events.last.locator("button").click()
    expect(card).to_have_attribute("data-jumped-to", str(last["time_s"]).removesuffix(".0"))
    assert card.locator(".job-player").evaluate("video => video.currentTime") == pytest.approx(last["time_s"], abs=0.6)
    assert card.locator(".job-player").evaluate("video => video.src").startswith("blob:")
