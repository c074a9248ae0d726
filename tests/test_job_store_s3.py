"""The job store's tests of tests/test_video_job_units.py, run again on a real S3 endpoint (moto's server), and a
segment's window read from an S3 object by ranges."""


import media_factory
import pytest
from s3_server import new_bucket_store
from test_video_job_units import (  # noqa: F401 - collected here, with this module's job store: on S3
    LIMITS,
    test_a_final_state_is_never_overwritten_and_the_scan_reads_no_ended_job,
    test_a_segment_is_recorded_once_and_a_job_is_its_owner_s,
    test_an_ended_job_leaves_the_unfinished_and_is_swept_after_its_time_to_live,
)

from deployments.jobs.store import JobStore
from models.media.video import FrameSelection

pytestmark = pytest.mark.component


@pytest.fixture
def job_store(s3_endpoint):
    return JobStore(new_bucket_store(s3_endpoint))


def test_a_segment_on_s3_reads_ranges_of_the_object_not_the_whole_of_it(s3_endpoint, tmp_path):
    from deployments.files.service import sample_from_store
    from models.media.decode_budget import DecodeBudget

    store = new_bucket_store(s3_endpoint)
    # Two minutes of video, then 32 MiB the demuxer skips (a trailing 'free' box): a large object.
    video = media_factory.video_bytes("mp4", num_frames=240, fps=2, gop=4, width=64, height=48)
    padding = 32 * 2**20
    local = tmp_path / "padded.mp4"
    local.write_bytes(video + (padding + 8).to_bytes(4, "big") + b"free" + bytes(padding))
    record = store.put(str(local), owner="alice", filename="padded.mp4", purpose="vision", kind="video", sha256="cd" * 32,
                       size_bytes=local.stat().st_size, content_type="video/mp4", ttl_s=0)
    fetched: list[int] = []

    sampled = sample_from_store(store, record, FrameSelection(num_frames=2, start_s=60.0, end_s=70.0), LIMITS,
                                DecodeBudget(max_frames=4096, max_pixels=10**9), fetched)

    assert all(60.0 <= t < 70.0 for t in sampled.timestamps_s)
    assert 0 < fetched[0] <= 3 * 4 * 2**20 < record.bytes  # a few 4 MiB ranges of a 33 MiB object
