"""The file store's tests of tests/test_file_store.py, run again on a real S3 endpoint (moto's server), and what only
S3 shows: a listing cached by one process must not hide what another stored."""

import uuid

import fsspec
import pytest
from s3_server import new_bucket_store, storage_options
from test_file_store import (  # noqa: F401 - collected here, with this module's store: on S3
    _put,
    test_a_record_that_does_not_parse_or_names_another_place_is_no_file_and_the_sweep_goes_on,
    test_a_stored_file_is_listed_read_and_deleted_for_its_owner_only,
    test_an_expired_file_is_gone_from_storage_after_a_sweep,
    test_ids_that_are_not_ours_never_reach_the_storage_paths,
)

from deployments.files.store import FileStore
from deployments.jobs.store import JobStore

pytestmark = pytest.mark.component


@pytest.fixture
def store(s3_endpoint):
    return new_bucket_store(s3_endpoint)


def test_a_file_another_process_stored_is_found_after_this_one_listed_the_folder(s3_endpoint, tmp_path):
    """Each process (every ingress replica, the job runner) has its own S3 client: a listing one of them cached
    must not hide what another stored since (s3fs answered "not found" from its cached listing)."""
    bucket = f"vd-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", **storage_options(s3_endpoint)).mkdir(bucket)
    url = f"s3://{bucket}/files"
    reader = FileStore(url, storage_options(s3_endpoint))
    writer = FileStore(url, {**storage_options(s3_endpoint), "skip_instance_cache": True})  # as another process's
    first = _put(writer, tmp_path)
    assert [record.id for record in reader.list("alice")] == [first.id]  # the reader has listed alice's folder
    assert JobStore(reader).unfinished() == []  # and, as the job runner's scan does, every owner's jobs folder

    second = _put(writer, tmp_path)

    assert reader.get("alice", second.id) == second
    assert {record.id for record in reader.list("alice")} == {first.id, second.id}
