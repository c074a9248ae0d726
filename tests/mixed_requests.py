"""One batch of mixed media for batching tests: text only, an image, and two videos of different frame counts."""

import numpy as np

from models.requests import ChatMessage, GenerationRequest, ImagePart, TextPart, VideoPart


def mixed_requests(*, new_tokens: int, scale: int = 1) -> list[GenerationRequest]:
    """``scale`` multiplies the frame counts and sides (1: tiny-model sizes; 4 or more: real ones)."""
    rng = np.random.default_rng(0)

    def pixels(*shape: int) -> np.ndarray:
        return rng.integers(0, 256, shape, dtype=np.uint8)

    def request(*parts) -> GenerationRequest:
        return GenerationRequest(messages=(ChatMessage("user", tuple(parts)),), max_new_tokens=new_tokens)

    return [
        request(TextPart("What happens?")),
        request(ImagePart(pixels(96 * scale, 128 * scale, 3)), TextPart("Describe the image.")),
        request(VideoPart(pixels(4 * scale, 64 * scale, 96 * scale, 3)), TextPart("What is in this video?")),
        request(VideoPart(pixels(8, 64 * scale, 64 * scale, 3)), TextPart("Count the people")),
    ]
