"""Our messages in the form a processor's chat template takes, the same for every engine: both engines see the
same prompt and the same frames, with their times. No torch here."""

from typing import Any

import numpy as np

from models.requests import ChatMessage, ImagePart, TextPart, VideoPart


def to_template_chat(messages: tuple[ChatMessage, ...]) -> tuple[list[dict[str, Any]], list[np.ndarray], list[VideoPart]]:
    """Our messages -> the chat-template form, with media pulled out in order."""
    chat: list[dict[str, Any]] = []
    images: list[np.ndarray] = []
    videos: list[VideoPart] = []
    for message in messages:
        content: list[dict[str, Any]] = []
        for part in message.content:
            if isinstance(part, TextPart):
                content.append({"type": "text", "text": part.text})
            elif isinstance(part, ImagePart):
                content.append({"type": "image"})
                images.append(part.pixels)
            elif isinstance(part, VideoPart):
                content.append({"type": "video"})
                videos.append(part)
            else:
                raise TypeError(f"Unknown content part {type(part).__name__}")
        chat.append({"role": message.role, "content": content})
    return chat, images, videos


def frame_times(part: VideoPart) -> dict[str, Any]:
    """Sampled frames' times as video metadata (transformers' ``VideoMetadata`` fields, which vLLM takes too): at
    fps 1, a frame's "index" is its time in seconds."""
    return {
        "total_num_frames": len(part.frames),
        "fps": 1.0,
        "frames_indices": list(part.timestamps_s),
        "duration": part.timestamps_s[-1] if part.timestamps_s else None,
        "height": int(part.frames.shape[1]),
        "width": int(part.frames.shape[2]),
    }


def media_ids_by_modality(messages: tuple[ChatMessage, ...]) -> dict[str, tuple[str | None, ...]]:
    """Each image's and each video's identity (``None``: it has none), in the order :func:`to_template_chat` hands
    them to the processor: ``{"image": (...), "video": (...)}``."""
    ids: dict[str, list[str | None]] = {"image": [], "video": []}
    for message in messages:
        for part in message.content:
            if isinstance(part, ImagePart):
                ids["image"].append(part.media_id)
            elif isinstance(part, VideoPart):
                ids["video"].append(part.media_id)
    return {modality: tuple(values) for modality, values in ids.items()}
