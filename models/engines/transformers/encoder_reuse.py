"""The vision tower's outputs kept by media identity: a question about media this replica has encoded skips the tower.

A prefill normally hands the model its pixel values and the model runs its vision tower over all of them. With
reuse on, the prefill runs the tower itself, through the model's own ``get_image_features`` /
``get_video_features``, and only over the images and videos the cache does not hold; it passes every item's output
to the forward pass as ``mm_encoder_outputs`` (transformers' input for precomputed encoder outputs), with the grids
the positions need and no pixel values. The language model's prefill is the same either way: same tokens, same
embeddings at the media tokens.

Each item's output is kept under (modality, media identity, its patch grid), on the model's device, in the
replica's :class:`~models.media.media_cache.MediaCache`: its bytes count against the headroom, and admission takes
them back before a request would wait for memory (:class:`~models.engines.transformers.scheduler.BatchScheduler`).
An item with no identity is encoded and not kept. Models whose forward has no ``mm_encoder_outputs`` (older
transformers, remote-code families) run as before, with no cache.
"""

import inspect
import logging
from typing import Any, Callable

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from models.media.media_cache import MediaCache

logger = logging.getLogger(__name__)

# (modality, pixel input, grid input, the model's method that runs the tower over them)
MODALITIES = (
    ("image", "pixel_values", "image_grid_thw", "get_image_features"),
    ("video", "pixel_values_videos", "video_grid_thw", "get_video_features"),
)
PIXEL_INPUTS = frozenset(pixels for _, pixels, _, _ in MODALITIES)


def supports_encoder_reuse(model: Any) -> bool:
    """Whether ``model`` takes precomputed encoder outputs and exposes the methods that compute them."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return "mm_encoder_outputs" in parameters and all(hasattr(model, method) for *_, method in MODALITIES)


class EncoderReuse:
    def __init__(self, model: Any, cache: MediaCache[torch.Tensor], room_bytes: Callable[[], int]) -> None:
        self._model = model
        self._cache = cache
        self._room_bytes = room_bytes  # what the headroom has spare now, beyond the batch's predicted peak

    def encoder_outputs(self, prompts: list[Any], device: torch.device) -> dict[str, BaseModelOutputWithPooling]:
        """Every image's and video's tower output for ``prompts`` (in the order the processor concatenated them),
        from the cache where it holds them; the rest encoded now in one pass per modality, and kept."""
        outputs: dict[str, BaseModelOutputWithPooling] = {}
        for modality, pixel_key, grid_key, method in MODALITIES:
            items = list(_items(prompts, modality, pixel_key, grid_key))
            if not items:
                continue
            features: list[torch.Tensor | None] = [None] * len(items)
            first_of: dict[tuple, int] = {}  # the same media twice in one pass (two questions at once): encoded once
            missing = []
            for index, (key, _, _) in enumerate(items):
                if key is not None and key in first_of:
                    self._cache.count_hits(1)
                    continue
                features[index] = self._cache.get(key) if key is not None else None
                if features[index] is None:
                    missing.append(index)
                    if key is not None:
                        first_of[key] = index
            if missing:
                pixels = torch.cat([items[index][1] for index in missing]).to(device)
                grids = torch.stack([items[index][2] for index in missing]).to(device)
                with torch.inference_mode():
                    encoded = getattr(self._model, method)(pixels, grids, return_dict=True).pooler_output
                for index, output in zip(missing, encoded, strict=True):
                    features[index] = output
                    key = items[index][0]
                    if key is not None:
                        kept = output.clone()  # a view would keep the whole pass's output alive
                        self._cache.put(key, kept, kept.nbytes, media_id=key[1], room_bytes=self._room_bytes())
            for index, (key, _, _) in enumerate(items):
                if features[index] is None:  # a repeat within this pass
                    features[index] = features[first_of[key]]
            outputs[modality] = BaseModelOutputWithPooling(pooler_output=tuple(features))
        return outputs


def _items(prompts: list[Any], modality: str, pixel_key: str, grid_key: str):
    """(cache key or None, the item's pixel rows, its grid row) for each item of ``modality``, prompt by prompt."""
    for prepared in prompts:
        grid = prepared.inputs.get(grid_key)
        if grid is None:
            continue
        pixels = prepared.inputs[pixel_key]
        ids = prepared.media_ids.get(modality, ())
        start = 0
        for index, row in enumerate(grid):
            rows = int(row.prod())
            media_id = ids[index] if index < len(ids) else None
            key = (modality, media_id, tuple(int(value) for value in row)) if media_id is not None else None
            yield key, pixels[start:start + rows], row
            start += rows
