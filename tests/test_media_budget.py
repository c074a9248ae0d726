"""The per-request media budget and the visual-token arithmetic, without decoding anything."""

import pytest

from deployments.config.limits import LimitsSettings
from deployments.edge.json_body import MAX_JSON_DEPTH, json_depth
from deployments.edge.media_budget import PlannedPart, check_media_budget
from deployments.errors import ApiError
from models.media.visual_tokens import VisualTokenGeometry

pytestmark = pytest.mark.unit

LIMITS = LimitsSettings(max_media_parts=8, max_request_frames=32, max_request_pixels=10_000_000, max_prompt_tokens=4096)
GEOMETRY = VisualTokenGeometry()


def _video(frames: int, pixels: int = 448 * 448) -> PlannedPart:
    return PlannedPart("messages[0].content[0].video_url", "video", frames, pixels)


def test_the_tiny_models_processor_sizes_are_read_from_its_folder(tiny_model_path):
    assert VisualTokenGeometry.from_model_folder(tiny_model_path) == VisualTokenGeometry(14, 2, 2)


def test_visual_tokens_follow_patch_merge_and_temporal_sizes():
    assert GEOMETRY.image_tokens(448 * 448) == 256
    assert GEOMETRY.video_tokens(16, 448 * 448) == 8 * 256
    assert GEOMETRY.video_tokens(3, 448 * 448) == 2 * 256  # frames pair up; an odd one still costs a pair


def test_a_request_within_every_budget_passes():
    check_media_budget([_video(8), _video(8, 200_000)], LIMITS, GEOMETRY)


@pytest.mark.parametrize(
    ("parts", "fragment"),
    [
        ([_video(1, 1000)] * 9, "9 image and video parts; the limit is 8 per request"),
        ([_video(12, 1000)] * 3, "3 videos would decode 36 frames; the limit is 32 frames per request"),
        ([_video(16, 448 * 448)] * 2, "hold 6422528 pixels after scaling"),
        ([_video(16, 300_000)] * 2, None),
    ],
)
def test_a_request_over_a_budget_is_413_with_the_figures(parts, fragment):
    limits = LIMITS if fragment != "hold 6422528 pixels after scaling" else LIMITS.model_copy(update={"max_request_pixels": 6_000_000})
    with pytest.raises(ApiError) as raised:
        check_media_budget(parts, limits, GEOMETRY)

    assert raised.value.status_code == 413
    if fragment is None:  # 2 x 8 pairs x ceil(300000 / 784) = 6128 visual tokens > 4096
        assert raised.value.code == "prompt_too_long"
        assert "alone would be 6128 prompt tokens" in raised.value.message
    else:
        assert fragment in raised.value.message


def test_json_depth_is_counted_without_recursion():
    assert json_depth({"a": [1, {"b": []}]}, limit=MAX_JSON_DEPTH) == 4
    assert json_depth("scalar", limit=MAX_JSON_DEPTH) == 0
    nested: list = []
    for _ in range(5000):  # deeper than Python's recursion limit
        nested = [nested]
    assert json_depth(nested, limit=MAX_JSON_DEPTH) == MAX_JSON_DEPTH + 1


def test_images_are_budgeted_by_the_pixels_they_decode_to_not_the_pixels_they_scale_to():
    image = PlannedPart("messages[0].content[0].image_url", "image", 1, 448 * 448, source_pixels=40_000_000)
    limits = LIMITS.model_copy(update={"max_media_parts": 32, "max_prompt_tokens": 16384, "max_request_pixels": 64 * 448 * 448})

    check_media_budget([image] * 2, limits, GEOMETRY)  # 80 megapixels: under the default 100
    with pytest.raises(ApiError) as raised:
        check_media_budget([image] * 32, limits, GEOMETRY)  # 1.28 gigapixels, 8192 tokens after scaling

    assert raised.value.status_code == 413
    assert "hold 1280000000 pixels at their stored size; the limit is 100000000" in raised.value.message
