"""The Files service's use of a stored file in a request, on a local store with real videos made with PyAV:
whose frames a cache hit may return, a file swept mid-request, and what an error body may say."""

import media_factory
import pytest

from deployments.config.app_config import load_app_config
from deployments.edge.chat_translation import to_generation_request
from deployments.edge.openai_schema import ChatCompletionRequest
from deployments.errors import ApiError
from deployments.files.service import FilesService, download_content_type
from deployments.files.store import owner_of
from models.media import inputs as media
from models.media.decode_budget import DecodeBudget
from models.media.video import FrameSelection, VideoLimits

pytestmark = pytest.mark.unit

LIMITS = VideoLimits(max_duration_s=60, max_source_pixels=640 * 480, max_frames=32, target_pixels_per_frame=64 * 64)
CLIP = media_factory.video_bytes("mp4", num_frames=8, fps=8, width=64, height=64)


@pytest.fixture
def service(tmp_path):
    return FilesService(load_app_config({"files": {"store_url": (tmp_path / "store").as_uri()}}))


def _stored(service: FilesService, tmp_path, data: bytes, owner: str, kind="video", content_type="video/mp4"):
    upload = tmp_path / f"upload-{owner}"
    upload.write_bytes(data)
    return service.store.put(str(upload), owner=owner, filename="clip.mp4", purpose="vision", kind=kind,
                             sha256="cd" * 32, size_bytes=len(data), content_type=content_type, ttl_s=0)


def _budget(max_frames: int = 4096) -> DecodeBudget:
    return DecodeBudget(max_frames=max_frames, max_pixels=10**12, targets_left=4)


def test_frames_the_decode_budget_substituted_are_not_cached(service, tmp_path):
    # 8 s at 8 fps with one keyframe: target 7 s costs 57 frames; a budget of 12 frames substitutes.
    clip = media_factory.video_bytes("mp4", num_frames=64, fps=8, width=64, height=64, gop=64)
    record = _stored(service, tmp_path, clip, "alice")
    selection = FrameSelection(num_frames=4)

    sampled = service.sample(record, selection, LIMITS, _budget(max_frames=12))
    assert sampled.substituted > 0 and sampled.decoded_frames <= 12
    assert service.cached_frames(record, selection, LIMITS) is None

    exact = service.sample(record, selection, LIMITS, _budget())
    assert exact.substituted == 0
    assert service.cached_frames(record, selection, LIMITS).timestamps_s == exact.timestamps_s == (1.0, 3.0, 5.0, 7.0)


def test_a_frame_cache_hit_is_the_same_keys_only(service, tmp_path):
    alice, bob = (_stored(service, tmp_path, CLIP, owner_of(key)) for key in ("key-alice", "key-bob"))
    selection = FrameSelection(num_frames=4)

    service.sample(alice, selection, LIMITS, _budget())

    assert service.cached_frames(alice, selection, LIMITS) is not None
    assert service.cached_frames(bob, selection, LIMITS) is None  # the same bytes, another key: decoded again


def test_a_file_swept_between_its_record_and_its_bytes_is_a_404(service, tmp_path):
    record = _stored(service, tmp_path, CLIP, "alice")
    service.store.delete("alice", record.id)  # the sweep, after the request read the record

    for use in (lambda: service.probe(record, LIMITS), lambda: service.sample(record, FrameSelection(num_frames=4), LIMITS, _budget())):
        with pytest.raises(ApiError) as gone:
            use()
        assert gone.value.status_code == 404 and record.id in str(gone.value)


def test_an_error_about_a_stored_file_names_no_server_path(service, tmp_path):
    junk = _stored(service, tmp_path, b"\x00\x00\x00\x18ftypmp42" + b"\x17" * 4096, "alice")

    with pytest.raises(media.MediaError) as refused:
        service.probe(junk, LIMITS)

    assert str(tmp_path) not in str(refused.value) and "/" not in str(refused.value)
    assert "does not open as a video container" in str(refused.value)


@pytest.mark.parametrize(
    ("kind", "stored_type", "served"),
    [("video", "video/mp4", "video/mp4"), ("image", "image/png", "image/png"), ("other", "text/html", "application/octet-stream"),
     ("image", "text/html", "application/octet-stream")],
)
def test_a_download_is_served_as_what_the_bytes_are(service, tmp_path, kind, stored_type, served):
    record = _stored(service, tmp_path, CLIP, "alice", kind=kind, content_type=stored_type)

    assert download_content_type(record) == served


def _chat_naming(file_id: str, parts: int, messages: int) -> ChatCompletionRequest:
    content = [{"type": "image_url", "image_url": {"url": file_id}}] * parts + [{"type": "text", "text": "What is it?"}]
    return ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": content}] * messages, "max_tokens": 2})


def test_a_file_named_by_many_parts_is_read_and_decoded_once_per_request(tmp_path, monkeypatch):
    config = load_app_config({"files": {"store_url": (tmp_path / "store").as_uri()}})
    service = FilesService(config)
    png = media_factory.image_bytes("PNG", width=64, height=64)
    record = _stored(service, tmp_path, png, "alice", kind="image", content_type="image/png")
    reads = []
    read = service.store.read
    monkeypatch.setattr(service.store, "read", lambda rec: reads.append(rec.id) or read(rec))

    request = to_generation_request(_chat_naming(record.id, parts=15, messages=2), config, files=service, owner="alice")

    images = [part for message in request.messages for part in message.content if not hasattr(part, "text")]
    assert len(images) == 30  # the model still sees every part
    assert reads == [record.id]  # one read for 30 parts (each read the whole file before)
    assert all(image is images[0] for image in images)  # and one decode


def test_an_image_file_larger_than_an_image_may_be_is_refused_unread(tmp_path, monkeypatch):
    config = load_app_config({"files": {"store_url": (tmp_path / "store").as_uri()}, "limits": {"max_image_bytes": 4096}})
    service = FilesService(config)
    padded = media_factory.image_bytes("PNG", width=16, height=16) + b"\0" * 8192  # sniffed as an image
    record = _stored(service, tmp_path, padded, "alice", kind="image", content_type="image/png")
    monkeypatch.setattr(service.store, "read", lambda rec: pytest.fail("the file was read"))

    with pytest.raises(ApiError) as refused:
        to_generation_request(_chat_naming(record.id, parts=1, messages=1), config, files=service, owner="alice")

    assert refused.value.status_code == 413 and "an image may be 4096 bytes" in str(refused.value)


@pytest.mark.parametrize(
    ("files", "placed", "nodes", "refused"),
    [
        ({}, {}, 1, False),  # one machine, the default folder: fine
        ({}, {}, 3, True),  # three nodes, a folder only one of them sees
        ({"store_url": "file:///srv/vd-files"}, {"cpu_group": {"node_labels": {"vd-node": "cpu"}}}, 1, True),  # a cluster's config
        ({"store_url": "s3://bucket/files"}, {"cpu_group": {"node_labels": {"vd-node": "cpu"}}}, 3, False),
    ],
)
def test_a_node_local_store_on_a_cluster_is_named_with_the_fix(files, placed, nodes, refused):
    from deployments.files.service import node_local_store_problem

    problem = node_local_store_problem(load_app_config({"files": files, **placed}), alive_nodes=nodes)

    assert (problem is not None) == refused
    if refused:
        assert "node-local store" in problem and "s3://bucket/files" in problem and f"{nodes} nodes alive" in problem
