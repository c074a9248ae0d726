"""The Files API on a real deployment whose store is a real S3 endpoint (moto's server): upload once, ask many.

Two API keys: a file is its uploader's; the other key gets 404 for it, never 403.
"""

import base64
import io

import httpx
import media_factory
import openai
import pytest
from polling import wait_for_condition
from ray import serve
from s3_server import storage_options

from integration.conftest import TEST_APP_ARGS, deploy

pytestmark = pytest.mark.integration

KEYS = ("vd-files-key-alice-0001", "vd-files-key-bob-0002", "vd-files-key-carol-0003", "vd-files-key-dave-0004")
MODEL_ID = "tiny-qwen2-vl"
CLIP = media_factory.video_bytes("mp4", num_frames=24, fps=12)
MAX_FILES = 4
MAX_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def files_url(http_port, test_root, s3_endpoint):
    import fsspec

    fsspec.filesystem("s3", **storage_options(s3_endpoint)).mkdir("vd-files")
    keys_file = test_root / "files-api-keys"
    keys_file.write_text("\n".join(KEYS) + "\n")
    args = {
        "limits": TEST_APP_ARGS["limits"],
        "gpu_group": {"enabled": False},
        "cpu_group": {"num_cpus": 0.5},
        "auth": {"api_keys_file": str(keys_file)},
        "files": {"store_url": "s3://vd-files/store", "storage_options": storage_options(s3_endpoint),
                  "max_files_per_key": MAX_FILES, "max_bytes_per_key": MAX_BYTES},
    }
    url = deploy(args, http_port, name="files", route_prefix="/files")
    yield url
    serve.delete("files")


@pytest.fixture(scope="module")
def alice(files_url):
    return openai.OpenAI(base_url=f"{files_url}/v1", api_key=KEYS[0], max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def bob(files_url):
    return openai.OpenAI(base_url=f"{files_url}/v1", api_key=KEYS[1], max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def clip_id(alice):
    return alice.files.create(file=("clip.mp4", CLIP, "video/mp4"), purpose="vision").id


def _multipart(fields: dict[str, str]) -> list:
    """Text fields as multipart/form-data (what curl -F sends), with no file part."""
    return [(name, (None, value)) for name, value in fields.items()]


def _ask(client, part, **kwargs):
    return client.chat.completions.create(
        model=MODEL_ID, max_tokens=3, messages=[{"role": "user", "content": [part, {"type": "text", "text": "What happens?"}]}],
        **kwargs,
    )


def test_an_upload_is_a_file_object_listed_retrieved_and_read_back(alice, clip_id):
    retrieved = alice.files.retrieve(clip_id)
    listed = [item.id for item in alice.files.list().data]

    assert clip_id.startswith("file-")
    assert (retrieved.bytes, retrieved.filename, retrieved.purpose, retrieved.object) == (len(CLIP), "clip.mp4", "vision", "file")
    assert retrieved.kind == "video"
    assert clip_id in listed
    assert alice.files.content(clip_id).read() == CLIP


def test_a_chat_turn_asks_about_the_uploaded_video_as_if_it_were_sent_inline(alice, clip_id):
    inline = _ask(alice, {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(CLIP).decode()}})
    by_file = _ask(alice, {"type": "file", "file": {"file_id": clip_id}})
    by_url = _ask(alice, {"type": "video_url", "video_url": {"url": clip_id}})

    assert by_file.usage.prompt_tokens == inline.usage.prompt_tokens == by_url.usage.prompt_tokens
    assert by_file.choices[0].message.content == inline.choices[0].message.content  # greedy: the same frames


def test_a_second_analyze_of_a_file_comes_from_the_frame_cache(files_url, alice):
    fresh = alice.files.create(file=("again.mp4", CLIP, "video/mp4"), purpose="vision").id
    headers = {"Authorization": f"Bearer {KEYS[0]}"}
    form = {"file_id": fresh, "question": "What happens?", "max_tokens": "3", "frames": "3"}

    first = httpx.post(f"{files_url}/v1/analyze", files=_multipart(form), headers=headers, timeout=60)
    second = httpx.post(f"{files_url}/v1/analyze", files=_multipart(form), headers=headers, timeout=60)

    assert first.status_code == second.status_code == 200, first.text
    assert first.json()["timings"]["frame_cache"] == "miss"
    assert second.json()["timings"]["frame_cache"] == "hit" and second.json()["timings"]["decode_s"] == 0
    assert second.json()["answer"] == first.json()["answer"]
    assert second.json()["frames"]["timestamps_s"] == first.json()["frames"]["timestamps_s"]
    assert second.json()["video"]["file_id"] == fresh
    cache = httpx.get(f"{files_url}/v1/memory", headers=headers, timeout=60).json()["frame_cache"]
    assert cache["hits"] >= 1 and cache["entries"] >= 1 and 0 < cache["bytes"] <= cache["max_bytes"]
    alice.files.delete(fresh)


def test_another_keys_file_is_not_found_anywhere(bob, clip_id):
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(clip_id)
    with pytest.raises(openai.NotFoundError):
        bob.files.content(clip_id)
    with pytest.raises(openai.NotFoundError):
        bob.files.delete(clip_id)
    with pytest.raises(openai.NotFoundError, match="no file"):
        _ask(bob, {"type": "file", "file": {"file_id": clip_id}})
    assert clip_id not in [item.id for item in bob.files.list().data]


def test_a_deleted_file_is_gone(alice):
    file_id = alice.files.create(file=("gone.mp4", CLIP, "video/mp4"), purpose="vision").id

    deleted = alice.files.delete(file_id)

    assert deleted.deleted and deleted.id == file_id
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(file_id)
    with pytest.raises(openai.NotFoundError, match="no file"):
        _ask(alice, {"type": "video_url", "video_url": {"url": file_id}})


def test_a_file_that_is_not_a_video_is_refused_where_a_video_is_needed(alice, files_url):
    notes = alice.files.create(file=("notes.txt", b"just some notes", "text/plain"), purpose="user_data")

    assert alice.files.retrieve(notes.id).kind == "other"
    with pytest.raises(openai.BadRequestError, match="not a video"):
        _ask(alice, {"type": "video_url", "video_url": {"url": notes.id}})
    with pytest.raises(openai.BadRequestError, match="not an image"):
        _ask(alice, {"type": "file", "file": {"file_id": notes.id}})
    analyzed = httpx.post(f"{files_url}/v1/analyze", files=_multipart({"file_id": notes.id, "question": "?"}),
                          headers={"Authorization": f"Bearer {KEYS[0]}"}, timeout=60)
    assert analyzed.status_code == 400 and "not a video" in analyzed.json()["error"]["message"]
    alice.files.delete(notes.id)


def test_bad_uploads_get_their_status(files_url):
    headers = {"Authorization": f"Bearer {KEYS[0]}"}

    no_purpose = httpx.post(f"{files_url}/v1/files", files={"file": ("a.mp4", CLIP)}, headers=headers, timeout=60)
    bad_purpose = httpx.post(f"{files_url}/v1/files", files={"file": ("a.mp4", CLIP)}, data={"purpose": "fine-tune"},
                             headers=headers, timeout=60)
    too_big = httpx.post(f"{files_url}/v1/files", files={"file": ("big.bin", io.BytesIO(b"\0" * (1024 * 1024 + 1)))},
                         data={"purpose": "vision"}, headers=headers, timeout=60)
    no_key = httpx.get(f"{files_url}/v1/files", timeout=60)

    assert no_purpose.status_code == bad_purpose.status_code == 400
    assert "purpose" in bad_purpose.json()["error"]["message"]
    assert too_big.status_code == 413
    assert no_key.status_code == 401


def test_the_file_quota_per_key_is_a_429_with_the_figures(bob):
    held = [bob.files.create(file=(f"q{index}.mp4", CLIP, "video/mp4"), purpose="vision").id for index in range(MAX_FILES)]

    with pytest.raises(openai.RateLimitError, match=f"holds {MAX_FILES} files; the limit is {MAX_FILES}"):
        bob.files.create(file=("one-more.mp4", CLIP, "video/mp4"), purpose="vision")

    bob.files.delete(held[0])
    bob.files.create(file=("now-fits.mp4", CLIP, "video/mp4"), purpose="vision")  # room again


def test_the_byte_quota_per_key_is_a_413_with_the_figures(files_url):
    carol = openai.OpenAI(base_url=f"{files_url}/v1", api_key=KEYS[2], max_retries=0, timeout=60)
    small = carol.files.create(file=("small.bin", b"\0" * 1000, "application/octet-stream"), purpose="user_data")

    with pytest.raises(openai.APIStatusError) as refused:
        carol.files.create(file=("big.bin", b"\0" * MAX_BYTES, "application/octet-stream"), purpose="user_data")

    assert refused.value.status_code == 413
    assert f"holds 1000 bytes of files and job results; with this one ({MAX_BYTES} bytes)" in refused.value.message
    assert f"over the {MAX_BYTES}-byte limit" in refused.value.message
    assert [item.id for item in carol.files.list().data] == [small.id]  # nothing half-stored


def test_thirty_parallel_uploads_keep_the_file_quota_on_s3(files_url):
    import concurrent.futures

    headers = {"Authorization": f"Bearer {KEYS[3]}"}

    def upload(index: int) -> int:
        return httpx.post(f"{files_url}/v1/files", files={"file": (f"p{index}.mp4", CLIP, "video/mp4")},
                          data={"purpose": "vision"}, headers=headers, timeout=120).status_code

    with concurrent.futures.ThreadPoolExecutor(30) as pool:
        statuses = sorted(pool.map(upload, range(30)))

    held = httpx.get(f"{files_url}/v1/files", headers=headers, timeout=60).json()["data"]
    assert statuses == [200] * MAX_FILES + [429] * (30 - MAX_FILES)  # counted after each store, never past the quota
    assert len(held) == MAX_FILES
    for record in held:
        httpx.delete(f"{files_url}/v1/files/{record['id']}", headers=headers, timeout=60)


def test_a_download_is_served_as_what_its_bytes_are_never_as_a_page(files_url):
    headers = {"Authorization": f"Bearer {KEYS[2]}"}
    page = b"<html><script>alert(document.cookie)</script></html>"
    uploaded = httpx.post(f"{files_url}/v1/files", files={"file": ("page.html", page, "text/html")}, data={"purpose": "user_data"},
                          headers=headers, timeout=60)
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]

    download = httpx.get(f"{files_url}/v1/files/{file_id}/content", headers=headers, timeout=60)

    assert download.content == page
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["x-content-type-options"] == "nosniff"
    assert httpx.delete(f"{files_url}/v1/files/{file_id}", headers=headers, timeout=60).status_code == 200


@pytest.mark.parametrize(
    "disposition",
    [b'filename="clip\x1b[31mred.mp4"', b'filename="clip\x7f.mp4"', b'filename="clip\xc2\x85INFO forged.mp4"'],
    ids=["an escape", "a delete", "a next-line"],
)
def test_a_filename_with_control_characters_is_a_400_and_nothing_is_stored(files_url, disposition):
    headers = {"Authorization": f"Bearer {KEYS[2]}"}
    held = httpx.get(f"{files_url}/v1/files", headers=headers, timeout=60).json()["data"]
    boundary = b"vd-boundary"
    body = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nvision\r\n'
        + b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; ' + disposition
        + b"\r\nContent-Type: video/mp4\r\n\r\n" + CLIP + b"\r\n--" + boundary + b"--\r\n"
    )

    refused = httpx.post(f"{files_url}/v1/files", content=body, timeout=60,
                         headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary.decode()}"})

    assert refused.status_code == 400 and "control characters" in refused.json()["error"]["message"]
    assert httpx.get(f"{files_url}/v1/files", headers=headers, timeout=60).json()["data"] == held


def test_a_long_video_job_reads_its_segments_from_the_s3_store(alice, files_url):
    video = media_factory.video_bytes("mp4", num_frames=40, fps=2, gop=4)  # 20 s: four segments of 5 s
    file_id = alice.files.create(file=("twenty-seconds.mp4", video, "video/mp4"), purpose="vision").id
    headers = {"authorization": f"Bearer {KEYS[0]}"}
    try:
        response = httpx.post(f"{files_url}/v1/video/jobs", headers=headers, timeout=30,
                              json={"file_id": file_id, "question": "What happens?", "segment_s": 5, "frames": 2})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]

        def ended() -> dict | None:
            body = httpx.get(f"{files_url}/v1/video/jobs/{job_id}", headers=headers, timeout=30).json()
            return body if body["state"] not in ("queued", "running", "finalizing") else None

        body = wait_for_condition(ended, timeout_s=180, interval_s=0.5)
        assert body["state"] == "succeeded", body["reason"]
        assert [segment["index"] for segment in body["segments"]] == [0, 1, 2, 3]
        # Each decode read the object from S3 in ranges (a small file is one range: all of it, never more).
        assert all(0 < segment["store_bytes_fetched"] <= len(video) for segment in body["segments"])
    finally:
        alice.files.delete(file_id)
