"""The node's own cache folder: the tiny model, fetched checkpoints, quantized loads (torch-free: the ingress uses it)."""

import os
import pathlib

CACHE_DIR_ENV = "VIDEO_DETECTIVE_CACHE"


def default_cache_dir() -> pathlib.Path:
    """``$VIDEO_DETECTIVE_CACHE``, else ``~/.cache/video-detective``."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return pathlib.Path(configured)
    return pathlib.Path.home() / ".cache" / "video-detective"
