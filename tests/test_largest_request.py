"""The largest request the limits allow, and one pricing of it: the loader's activation reserve is what
admission charges that request when it comes, with a real processor and a real model."""

import numpy as np
import pytest

from deployments.config.app_config import ConfigError, load_app_config
from deployments.config.limits import LimitsSettings
from deployments.edge.media_budget import PlannedPart, check_media_budget
from deployments.errors import ApiError
from deployments.plan import largest_request_for, resolve_app
from memory.admission import RequestCostModel
from memory.largest_request import largest_media_mix, largest_request
from models.media.visual_tokens import VisualTokenGeometry
from models.requests import ChatMessage, GenerationRequest, ImagePart, TextPart, VideoPart

pytestmark = pytest.mark.unit

SIDE = 112  # a multiple of 28: the processor keeps the size, 16 tokens (64 patches) a picture
SMALL_LIMITS = {
    "max_pixels_per_frame": SIDE * SIDE,
    "max_image_pixels": SIDE * SIDE,
    "max_media_parts": 2,
    "max_request_frames": 4,
    "max_request_pixels": 5 * SIDE * SIDE,
    "video_frames": 4,
    "max_video_frames": 4,
    "max_prompt_tokens": 148,
    "max_tokens": 8,
    "default_max_tokens": 8,
}


def test_the_default_limits_allow_48_picture_groups_and_the_prompt_cap_keeps_8192_visual_tokens():
    limits = LimitsSettings()

    mix = largest_media_mix(
        max_media_parts=32, max_request_frames=64, max_request_pixels=64 * 448 * 448, pixels_per_frame=448 * 448,
        temporal_patch_size=2,
    )
    request = largest_request(
        max_prompt_tokens=limits.max_prompt_tokens, max_new_tokens=limits.max_tokens, max_media_parts=limits.max_media_parts,
        max_request_frames=limits.max_request_frames, max_request_pixels=limits.max_request_pixels,
        pixels_per_frame=limits.max_pixels_per_frame,
    )

    assert mix.groups == 48 and mix.pictures == 64  # e.g. 32 videos of 1 and 3 frames: 16 + 16 x 2 groups
    assert (request.prompt_tokens, request.max_new_tokens) == (8192, 512)
    assert request.visual_patches == 8192 * 4  # 48 x 256 = 12288 tokens, over the cap
    assert request.media_bytes == 3 * 64 * 448 * 448


@pytest.mark.parametrize(
    ("parts", "frames", "pictures", "expected_groups"),
    [
        (2, 4, 5, 3),  # one image and a 4-frame video (1 + 2), or two videos of 1 and 3 frames (1 + 2)
        (1, 64, 64, 32),  # one part: a 64-frame video, in pairs
        (8, 64, 8, 8),  # the pixel cap: 8 pictures, each an image
        (4, 3, 100, 5),  # three images and a 3-frame video (two groups, the second of one frame)
    ],
)
def test_the_mix_is_the_most_groups_the_caps_allow(parts, frames, pictures, expected_groups):
    mix = largest_media_mix(
        max_media_parts=parts, max_request_frames=frames, max_request_pixels=pictures * 100, pixels_per_frame=100,
        temporal_patch_size=2,
    )

    assert mix.groups == expected_groups
    assert mix.images + mix.videos <= parts and mix.video_frames <= frames and mix.pictures <= pictures


def test_the_ingress_admits_the_largest_mix_and_refuses_one_picture_more(tiny_model_path):
    limits = LimitsSettings(**{**SMALL_LIMITS, "max_prompt_tokens": 4096})
    geometry = VisualTokenGeometry.from_model_folder(tiny_model_path)
    mix = largest_media_mix(
        max_media_parts=limits.max_media_parts, max_request_frames=limits.max_request_frames,
        max_request_pixels=limits.max_request_pixels, pixels_per_frame=limits.max_pixels_per_frame,
        temporal_patch_size=geometry.temporal_patch_size,
    )
    image = PlannedPart("image_url", "image", 1, SIDE * SIDE)
    parts = [image] * mix.images + [PlannedPart("video_url", "video", mix.video_frames, SIDE * SIDE)]

    check_media_budget(parts, limits, geometry)  # within every cap
    assert sum(part.visual_tokens(geometry) for part in parts) == mix.groups * 16
    longer = parts[:-1] + [PlannedPart("video_url", "video", mix.video_frames + 1, SIDE * SIDE)]
    with pytest.raises(ApiError) as refused:
        check_media_budget(longer, limits, geometry)
    assert refused.value.status_code == 413 and "4 frames per request" in str(refused.value)


def test_the_reserve_is_what_admission_charges_the_largest_request(tiny_adapter, tiny_model_path):
    """One pricing: the CPU group's reserve, from the limits alone, equals admission's price of a real request at
    every cap (one image and a 4-frame video at the pixel and frame caps, text up to the prompt cap)."""
    plan = resolve_app(load_app_config({"limits": SMALL_LIMITS, "gpu_group": {"enabled": False}}))
    engine = tiny_adapter.batch_engine()
    frames = np.full((4, SIDE, SIDE, 3), 128, dtype=np.uint8)
    media = (ImagePart(pixels=frames[0]), VideoPart(frames=frames, timestamps_s=(0.0, 1.0, 2.0, 3.0)))
    one_word = engine.prepare(_request(media, "a ")).prompt_tokens
    prepared = engine.prepare(_request(media, "a " * (SMALL_LIMITS["max_prompt_tokens"] - one_word + 1)))
    assert prepared.prompt_tokens == SMALL_LIMITS["max_prompt_tokens"]  # one token a word: the prompt is at its cap

    admission = RequestCostModel.from_config(tiny_adapter.model.config, dtype_bytes=engine.kv_dtype_bytes, device="cpu")
    charged = admission.predict(
        prompt_tokens=prepared.prompt_tokens, max_new_tokens=SMALL_LIMITS["max_tokens"],
        visual_patches=prepared.visual_patches, input_bytes=prepared.input_bytes, media_bytes=prepared.media_bytes,
    )

    assert plan.largest_request.visual_patches == prepared.visual_patches == 3 * 64
    assert plan.largest_request.input_bytes == prepared.input_bytes
    assert plan.largest_request.media_bytes == prepared.media_bytes
    assert plan.group("cpu").reserve_bytes == charged.total_bytes


def test_the_reserve_grows_with_the_limits_and_is_priced_per_device(tiny_model_path):
    def plan(**limits):
        return resolve_app(load_app_config({"limits": limits, "gpu_group": {"num_gpus": 0.5, "device": "cuda"}}))

    default, shorter = plan(), plan(max_prompt_tokens=4096)

    assert shorter.group("cpu").reserve_bytes < default.group("cpu").reserve_bytes
    # The CPU materialises fp32 attention scores for every head; CUDA's kernel does not, and computes in bf16.
    assert default.group("gpu").reserve_bytes < default.group("cpu").reserve_bytes
    assert largest_request_for(default.config, str(tiny_model_path)) == default.largest_request


def test_limits_that_cannot_hold_one_video_are_refused_at_start():
    with pytest.raises(ConfigError, match="video_frames"):
        load_app_config({"limits": {**SMALL_LIMITS, "max_request_frames": 2}})


def _request(media, text: str) -> GenerationRequest:
    return GenerationRequest(messages=(ChatMessage("user", (*media, TextPart(text))),), max_new_tokens=SMALL_LIMITS["max_tokens"])
