"""What a model replica takes from the app's config before it loads: the model's folder, the largest request
the limits allow (which sizes the activation reserve), and the cache of quantized loads.

The app builder (``num_gpus: auto``, :mod:`deployments.gpu_packing`) and the replica read them the same way.
"""

import pathlib

from deployments.config import AppConfig
from memory.estimate import RequestShape
from models.tiny import default_cache_dir, ensure_tiny_model
from models.weight_cache import WeightCache


def request_shape(config: AppConfig) -> RequestShape:
    """The largest request the limits allow, which sizes the activation reserve."""
    limits = config.limits
    return RequestShape(
        max_frames=limits.max_video_frames,
        max_pixels_per_frame=limits.max_pixels_per_frame,
        max_images=1,
        max_new_tokens=limits.max_tokens,
    )


def model_path(config: AppConfig) -> str:
    return str(ensure_tiny_model()) if config.model.source == "tiny" else config.model.source


def weight_cache(config: AppConfig) -> WeightCache | None:
    """The replica's cache of quantized loads (``None`` when ``model.weight_cache_bytes`` is 0)."""
    if config.model.weight_cache_bytes == 0:
        return None
    root = pathlib.Path(config.model.weight_cache_dir) if config.model.weight_cache_dir else default_cache_dir() / "weights"
    return WeightCache(root, max_bytes=config.model.weight_cache_bytes)
