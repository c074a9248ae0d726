"""The file store on a local folder and on a real S3 endpoint (moto's server): records, owners, expiry, sweeping.

Expiry is checked on the storage itself: a swept file's objects are gone from the bucket or the folder.
"""

import json
import os
import stat
import time
import uuid

import media_factory
import numpy as np
import pytest

from deployments.files.frame_cache import FrameCache, FrameCacheKey
from deployments.files.store import FileStore, owner_of
from models.media.video import FrameSelection, SampledVideo, VideoLimits, sample_video

pytestmark = pytest.mark.unit


@pytest.fixture
def store(tmp_path):
    """A store on a local folder; tests/test_file_store_s3.py runs the same tests on S3."""
    return FileStore((tmp_path / "files").as_uri())


def _put(store: FileStore, tmp_path, *, owner="alice", data=b"\x00\x00\x00\x18ftypmp42 video bytes", ttl_s=0.0):
    local = tmp_path / f"upload-{uuid.uuid4().hex}"
    local.write_bytes(data)
    return store.put(str(local), owner=owner, filename="clip.mp4", purpose="vision", kind="video", sha256="ab" * 32,
                     size_bytes=len(data), content_type="video/mp4", ttl_s=ttl_s)


def test_a_stored_file_is_listed_read_and_deleted_for_its_owner_only(store, tmp_path):
    record = _put(store, tmp_path)
    other = _put(store, tmp_path, owner="bob")

    assert record.id.startswith("file-") and len(record.id) == 29
    assert store.get("alice", record.id) == record
    assert store.get("bob", record.id) is None  # another owner does not see it at all
    assert [r.id for r in store.list("alice")] == [record.id]
    assert store.read(record) == b"\x00\x00\x00\x18ftypmp42 video bytes"
    with store.open(record) as file:
        assert file.read(4) == b"\x00\x00\x00\x18"
    assert not store.delete("bob", record.id)
    assert store.delete("alice", record.id)
    assert store.get("alice", record.id) is None and store.list("alice") == []
    assert store.get("bob", other.id) == other


def test_an_expired_file_is_gone_from_storage_after_a_sweep(store, tmp_path):
    expiring = _put(store, tmp_path, ttl_s=1)
    kept = _put(store, tmp_path, owner="bob")
    paths = [store._path(expiring.owner, expiring.id, suffix) for suffix in ("", ".json")]
    assert all(store._fs.exists(path) for path in paths)

    in_use = _put(store, tmp_path, ttl_s=1)  # an unfinished job analyses it
    time.sleep(1.1)  # the time to live is whole seconds
    assert store.get("alice", expiring.id) is None  # past its time: not found, even before the sweep
    swept = store.sweep(in_use=frozenset({("alice", in_use.id)}))

    assert swept == 1
    assert store.get("alice", in_use.id) is None and store.get("alice", in_use.id, include_expired=True) == in_use
    store._fs.invalidate_cache()
    assert not any(store._fs.exists(path) for path in paths)
    assert store.get("alice", expiring.id) is None
    assert store.get("bob", kept.id) == kept


def test_ids_that_are_not_ours_never_reach_the_storage_paths(store, tmp_path):
    record = _put(store, tmp_path)

    for probe in ("../alice/" + record.id, record.id + ".json", "file-" + "x" * 24, "alice/" + record.id):
        assert store.get("alice", probe) is None


def test_owners_are_key_hashes_and_no_key_is_anonymous():
    assert owner_of(None) == "anonymous"
    assert owner_of("key-1") != owner_of("key-2")
    assert len(owner_of("key-1")) == 16 and "key-1" not in owner_of("key-1")


def _sampled(frames: int) -> SampledVideo:
    limits = VideoLimits(max_duration_s=60, max_source_pixels=640 * 480, max_frames=32, target_pixels_per_frame=64 * 64)
    return sample_video(media_factory.video_bytes("mp4", num_frames=frames, fps=8, width=64, height=64),
                        FrameSelection(num_frames=frames), limits)


def test_the_frame_cache_is_bounded_in_bytes_and_evicts_the_least_recently_used():
    one = _sampled(4)
    size = one.frames.nbytes
    cache = FrameCache(max_bytes=2 * size)
    keys = [FrameCacheKey(owner="o", sha256=str(i), num_frames=4, fps=None, start_s=0.0, end_s=None, max_frames=32, target_pixels_per_frame=4096) for i in range(3)]

    cache.put(keys[0], one)
    cache.put(keys[1], one)
    assert cache.get(keys[0]) is one  # now the most recently used
    cache.put(keys[2], one)

    assert cache.get(keys[1]) is None  # evicted: least recently used
    assert cache.get(keys[0]) is one and cache.get(keys[2]) is one
    assert (cache.stats.hits, cache.stats.misses, cache.stats.entries, cache.stats.bytes) == (3, 1, 2, 2 * size)
    assert np.array_equal(cache.get(keys[0]).frames, one.frames)


def test_a_video_larger_than_the_whole_cache_is_not_kept():
    big = _sampled(8)
    cache = FrameCache(max_bytes=big.frames.nbytes - 1)
    key = FrameCacheKey(owner="o", sha256="big", num_frames=8, fps=None, start_s=0.0, end_s=None, max_frames=32, target_pixels_per_frame=4096)

    cache.put(key, big)

    assert cache.get(key) is None and cache.stats.bytes == 0


def test_a_record_that_does_not_parse_or_names_another_place_is_no_file_and_the_sweep_goes_on(store, tmp_path):
    truncated, planted, expiring = (_put(store, tmp_path, ttl_s=ttl) for ttl in (0, 0, 1))
    store._fs.pipe_file(store._path("alice", truncated.id, ".json"), b'{"id": "file-')  # cut short
    # An edited record that points its bytes at another owner's folder (or outside the root).
    forged = json.loads(store._fs.cat_file(store._path("alice", planted.id, ".json")))
    store._fs.pipe_file(store._path("alice", planted.id, ".json"), json.dumps({**forged, "owner": "../../etc"}).encode())

    time.sleep(1.1)
    assert store.sweep() == 1  # the expiring one, past the two bad records
    assert store.get("alice", truncated.id) is None and store.get("alice", planted.id) is None
    assert store.list("alice") == []


def test_a_local_store_is_private_to_this_user(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    store = FileStore(shared.as_uri())
    _put(store, tmp_path)

    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o700  # narrowed at start
    assert stat.S_IMODE(os.stat(shared / "alice").st_mode) == 0o700
