"""Upload files an ingress left behind when it died mid-request are swept at the next start."""

import os
import time

import pytest

from deployments.files.uploads import remove_stale_uploads

pytestmark = pytest.mark.unit


def test_only_old_upload_files_are_removed(tmp_path):
    old = tmp_path / "vd-upload-abc.video"
    fresh = tmp_path / "vd-upload-def.video"
    unrelated = tmp_path / "notes.txt"
    for path in (old, fresh, unrelated):
        path.write_bytes(b"x")
    day_ago = time.time() - 24 * 3600
    os.utime(old, (day_ago, day_ago))
    os.utime(unrelated, (day_ago, day_ago))

    removed = remove_stale_uploads(str(tmp_path), older_than_s=6 * 3600)

    assert removed == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt", "vd-upload-def.video"]
