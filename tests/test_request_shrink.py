"""Smaller requests after an out-of-memory: frames halved, pixels halved, down to the minimum."""

import numpy as np
import pytest

from models.media.request_shrink import ShrinkMinimum, request_size, shrink_request
from models.requests import ChatMessage, GenerationRequest, ImagePart, TextPart, VideoPart

pytestmark = pytest.mark.unit


def _video_request(frames: int, height: int, width: int, images: int = 0) -> GenerationRequest:
    video = VideoPart(
        frames=np.zeros((frames, height, width, 3), dtype=np.uint8), timestamps_s=tuple(float(i) for i in range(frames))
    )
    parts = (video, *(ImagePart(np.zeros((height, width, 3), dtype=np.uint8)) for _ in range(images)), TextPart("q"))
    return GenerationRequest(messages=(ChatMessage("user", parts),))


def test_each_step_halves_frames_and_pixels_keeping_the_first_and_last_frame():
    request = _video_request(16, 448, 448)

    smaller = shrink_request(request, ShrinkMinimum(min_frames=2, min_pixels_per_frame=10_000))

    size = request_size(smaller)
    assert size.video_frames == 8
    assert size.max_pixels_per_frame <= 448 * 448 // 2
    assert size.max_pixels_per_frame > 448 * 448 // 2 * 0.95
    video = smaller.messages[0].content[0]
    assert video.timestamps_s[0] == 0.0 and video.timestamps_s[-1] == 15.0
    assert len(video.timestamps_s) == 8
    assert smaller.messages[0].content[-1] == TextPart("q")


def test_shrinking_stops_at_the_minimum_and_then_says_there_is_no_next_step():
    minimum = ShrinkMinimum(min_frames=3, min_pixels_per_frame=20_000)
    request = _video_request(16, 448, 448, images=1)
    sizes = []
    while (request := shrink_request(request, minimum)) is not None:
        sizes.append(request_size(request))

    assert [size.video_frames for size in sizes] == [8, 4, 3, 3]
    assert all(size.max_pixels_per_frame >= 20_000 for size in sizes)
    assert sizes[-1].max_pixels_per_frame < 2 * 20_000


def test_a_text_only_request_cannot_shrink():
    request = GenerationRequest(messages=(ChatMessage("user", (TextPart("hi"),)),))

    assert shrink_request(request, ShrinkMinimum(min_frames=1, min_pixels_per_frame=1)) is None


@pytest.mark.parametrize(("frames", "height", "width"), [(2, 100, 100), (1, 50, 60)])
def test_media_already_at_the_minimum_cannot_shrink(frames, height, width):
    request = _video_request(frames, height, width)

    assert shrink_request(request, ShrinkMinimum(min_frames=2, min_pixels_per_frame=10_000)) is None
