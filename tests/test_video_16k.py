"""A 16000 x 16000 video is refused from its header, before a frame is decoded: checked in child processes, so that
peak memory is the check's own. Writing the video takes about 12 s, so this is not a unit test."""

import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.component


def test_a_16k_video_is_refused_without_decoding_a_frame(tmp_path):
    # Written and checked in child processes, so this process's peak memory says nothing about it.
    path = tmp_path / "16k.mkv"
    subprocess.run(
        [sys.executable, "-c", f"import media_factory, pathlib; pathlib.Path({str(path)!r}).write_bytes("
         "media_factory.video_bytes('mkv', num_frames=1, fps=1, width=16000, height=16000))"],
        check=True, cwd=pathlib.Path(__file__).parent, capture_output=True,
    )
    check = (
        "import resource, sys\n"
        "from models.media import inputs as media\n"
        "from models.media.video import FrameSelection, VideoLimits, sample_video\n"
        "limits = VideoLimits(max_duration_s=60, max_source_pixels=8192 * 4320, max_frames=8, target_pixels_per_frame=10**6)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        f"    sample_video({str(path)!r}, FrameSelection(num_frames=1), limits)\n"
        "except media.MediaTooLargeError as error:\n"
        "    print(error)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)\n"
    )
    result = subprocess.run([sys.executable, "-c", check], check=True, capture_output=True, text=True)
    message, grown_bytes = result.stdout.strip().splitlines()

    assert "16000x16000 = 256000000 pixels; the limit is 35389440" in message
    # One decoded 16000x16000 YUV frame is 384 MB; refusing from the header costs a small fraction of that.
    assert int(grown_bytes) < 150 * 1024**2
