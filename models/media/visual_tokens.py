"""How many prompt tokens an image or a video becomes, from the processor's own patch and merge sizes.

Qwen2-VL-style processors cut an image into ``patch_size`` squares, merge ``merge_size x merge_size``
of them into one token, and pair video frames (``temporal_patch_size``): a 448x448 image is
(448 / 28)^2 = 256 tokens, a 16-frame 448x448 video 8 x 256 = 2048. The sizes are read from the
checkpoint's ``processor_config.json`` (or ``preprocessor_config.json``), so the ingress can refuse a
request whose media alone exceed ``limits.max_prompt_tokens`` before it decodes a single frame.
No torch here: the ingress uses it.
"""

import dataclasses
import json
import math
import pathlib
from typing import Any

_CONFIG_FILES = ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json")


@dataclasses.dataclass(frozen=True)
class VisualTokenGeometry:
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2

    @classmethod
    def from_model_folder(cls, folder: str | pathlib.Path) -> "VisualTokenGeometry":
        """The sizes the checkpoint's processor uses; Qwen2-VL's defaults where its files do not say."""
        found: dict[str, int] = {}
        for name in _CONFIG_FILES:
            path = pathlib.Path(folder) / name
            if path.is_file():
                _collect(json.loads(path.read_text()), found)
        return cls(**{field: found[field] for field in ("patch_size", "merge_size", "temporal_patch_size") if field in found})

    @property
    def pixels_per_token(self) -> int:
        return (self.patch_size * self.merge_size) ** 2

    def image_tokens(self, pixels: int) -> int:
        return math.ceil(pixels / self.pixels_per_token)

    def video_tokens(self, frames: int, pixels_per_frame: int) -> int:
        return math.ceil(frames / self.temporal_patch_size) * self.image_tokens(pixels_per_frame)


def _collect(config: Any, found: dict[str, int]) -> None:
    """The first integer value of each size key, at any depth (``processor_config.json`` nests them)."""
    if isinstance(config, dict):
        for key, value in config.items():
            if key in ("patch_size", "merge_size", "temporal_patch_size") and isinstance(value, int):
                found.setdefault(key, value)
            else:
                _collect(value, found)
