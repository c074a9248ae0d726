"""The largest request the per-request limits allow, as the cost model sees it (a :class:`RequestSize`).

A replica keeps an activation reserve beside its weights: the memory this request costs, priced by
admission's own cost model (:meth:`memory.admission.RequestCostModel.price`), so the loader and
admission agree on what the largest request needs. The caps that bound it are the per-request ones
the ingress enforces before decoding (``deployments/edge/media_budget.py``):

* at most ``max_media_parts`` images and videos, ``max_request_frames`` frames across the videos and
  ``max_request_pixels`` pixels across images and frames, each scaled to ``pixels_per_frame``;
* at most ``max_prompt_tokens`` prompt tokens, text and visual together; ``max_new_tokens`` answered.

Qwen2-VL-style processors cut a picture into ``patch_size`` squares, in groups of
``temporal_patch_size`` pictures (an image is one group, a video of ``f`` frames ``ceil(f / t)``), and
merge ``merge_size x merge_size`` patches into one token. An image is therefore the most tokens per
pixel; a video the most tokens per part. The largest request mixes them: every split of the parts
into images and videos is tried. Its prompt is ``max_prompt_tokens`` (text fills what the media leave).

Example, the default limits (32 parts, 64 frames, 64 x 448 x 448 pixels at 448 x 448, 8192 prompt
tokens): 31 images and one video of 33 frames, or 32 videos of 1 and 3 frames, are 48 groups of 1024
patches, 12288 tokens, over the prompt cap: 8192 visual tokens (32768 patches) and no text.
"""

import dataclasses

from memory.admission import RequestSize

PIXEL_VALUE_BYTES = 4  # the processor's pixel values are fp32
# Per prompt token the processor returns three int64 tensors: input ids, the attention mask and the
# multimodal token types; per image or video a (t, h, w) int64 grid.
TOKEN_TENSOR_BYTES = 3 * 8
GRID_BYTES = 3 * 8
CHANNELS = 3  # RGB: a frame held as bytes, and a patch's pixel values


@dataclasses.dataclass(frozen=True)
class MediaMix:
    """How the largest request's media are made up."""

    images: int
    videos: int
    video_frames: int
    groups: int  # temporal patch groups: one per image, ceil(frames / t) per video

    @property
    def pictures(self) -> int:
        return self.images + self.video_frames


def largest_media_mix(
    *, max_media_parts: int, max_request_frames: int, max_request_pixels: int, pixels_per_frame: int, temporal_patch_size: int
) -> MediaMix:
    """The split of parts into images and videos with the most patch groups (then the most pictures)."""
    pictures_allowed = max_request_pixels // pixels_per_frame
    best = MediaMix(images=0, videos=0, video_frames=0, groups=0)
    for images in range(min(max_media_parts, pictures_allowed) + 1):
        frames = min(max_request_frames, pictures_allowed - images) if max_media_parts > images else 0
        videos = min(max_media_parts - images, frames)  # a video holds a frame at least
        mix = MediaMix(images, videos, frames, groups=images + _video_groups(frames, videos, temporal_patch_size))
        if (mix.groups, mix.pictures) > (best.groups, best.pictures):
            best = mix
    return best


def _video_groups(frames: int, videos: int, temporal: int) -> int:
    """Most groups ``frames`` frames make across ``videos`` videos: a video's last group may hold one frame, so
    ``sum(ceil(f_v / t)) <= (frames + videos x (t - 1)) / t``, and never more than one group a frame."""
    if not videos:
        return 0
    return min(frames, (frames + videos * (temporal - 1)) // temporal)


def largest_request(
    *,
    max_prompt_tokens: int,
    max_new_tokens: int,
    max_media_parts: int,
    max_request_frames: int,
    max_request_pixels: int,
    pixels_per_frame: int,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
) -> RequestSize:
    """The largest request these caps allow (see the module's note)."""
    mix = largest_media_mix(
        max_media_parts=max_media_parts,
        max_request_frames=max_request_frames,
        max_request_pixels=max_request_pixels,
        pixels_per_frame=pixels_per_frame,
        temporal_patch_size=temporal_patch_size,
    )
    tokens_per_group = -(-pixels_per_frame // (patch_size * merge_size) ** 2)
    visual_tokens = min(mix.groups * tokens_per_group, max_prompt_tokens)
    visual_patches = visual_tokens * merge_size**2
    pixel_values = visual_patches * CHANNELS * temporal_patch_size * patch_size**2 * PIXEL_VALUE_BYTES
    return RequestSize(
        prompt_tokens=max_prompt_tokens,
        max_new_tokens=max_new_tokens,
        visual_patches=visual_patches,
        input_bytes=TOKEN_TENSOR_BYTES * max_prompt_tokens + pixel_values + GRID_BYTES * (mix.images + mix.videos),
        media_bytes=CHANNELS * mix.pictures * pixels_per_frame,
    )
