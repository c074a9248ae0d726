"""The media identity: what makes two media parts the same for every cache (source, frame times, size), and what
makes them differ."""

import dataclasses

import numpy as np
import pytest

from models.media.identity import content_sha256, media_source
from models.media.request_shrink import ShrinkMinimum, shrink_request
from models.requests import ChatMessage, GenerationRequest, ImagePart, TextPart, VideoPart

pytestmark = pytest.mark.unit

FRAMES = np.zeros((4, 32, 48, 3), np.uint8)
TIMES = (0.0, 1.5, 3.0, 4.5)


def test_the_same_bytes_sampled_the_same_way_are_the_same_media():
    source = media_source("key-a", content_sha256(b"video bytes"))
    assert VideoPart(FRAMES, TIMES, source).media_id == VideoPart(FRAMES.copy(), TIMES, source).media_id
    assert len(VideoPart(FRAMES, TIMES, source).media_id) == 32


@pytest.mark.parametrize("change", [
    {"timestamps_s": (0.0, 1.5, 3.0, 4.6)},  # another frame time
    {"frames": FRAMES[:, :16]},  # another size after resizing
    {"frames": FRAMES[:2], "timestamps_s": TIMES[:2]},  # fewer frames
    {"source": media_source("key-a", content_sha256(b"other bytes"))},  # other bytes
    {"source": media_source("key-b", content_sha256(b"video bytes"))},  # another owner: no hit tells one key of another
])
def test_anything_that_changes_what_the_model_sees_or_who_sent_it_is_other_media(change):
    video = VideoPart(FRAMES, TIMES, media_source("key-a", content_sha256(b"video bytes")))
    assert dataclasses.replace(video, **change).media_id != video.media_id


def test_an_image_and_a_video_from_one_source_differ_and_media_without_a_source_have_no_identity():
    source = media_source("key-a", "sha")
    assert ImagePart(FRAMES[0], source).media_id != VideoPart(FRAMES[:1], (), source).media_id
    assert ImagePart(FRAMES[0]).media_id is None and VideoPart(FRAMES).media_id is None


def test_a_shrunk_request_keeps_the_source_and_is_identified_by_what_it_now_holds():
    video = VideoPart(np.zeros((8, 64, 64, 3), np.uint8), tuple(float(t) for t in range(8)), media_source("k", "sha"))
    request = GenerationRequest(messages=(ChatMessage("user", (video, TextPart("?"))),))

    smaller = shrink_request(request, ShrinkMinimum(min_frames=2, min_pixels_per_frame=16))

    shrunk = smaller.messages[0].content[0]
    assert shrunk.source == video.source and shrunk.media_id not in (None, video.media_id)
    assert request.media_ids == (video.media_id,) and smaller.media_ids == (shrunk.media_id,)
