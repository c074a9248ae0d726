"""The KV cache of a prompt's media prefix, kept by media identity: a second question about the same media prefills
only its own words.

A chat prompt about a video reads: the system prompt, the user turn's opening, the video's tokens (hundreds to
thousands), then the question and the assistant's opening. Everything up to the end of the last media is the
**media prefix**; its keys and values depend on those tokens alone (causal attention, the positions of a row alone).
After a prefill, the engine keeps each identified prompt's prefix KV, sliced from its row, with the prompt's rotary
offset (multimodal RoPE places the text after media at ``position + delta``). A later prompt with the same prefix
tokens and the same media identities is prefilled from a copy of that cache: only its suffix goes through the model,
at positions ``prefix + delta + i``, and it joins the running batch like any row.

Kept in the replica's :class:`~models.media.media_cache.MediaCache` beside the vision tower's outputs, under
``("prefix", digest of the prefix's token ids, media identities)``: its bytes count against the headroom and are
given back first when requests need them. Requires a full-attention ``DynamicCache`` (what the batch joins anyway).
"""

import dataclasses
import hashlib
from typing import Any

import torch

PREFIX = "prefix"


@dataclasses.dataclass(frozen=True)
class CachedPrefix:
    """One media prefix's keys and values, ``(1, kv_heads, length, head_dim)`` a layer, and its rotary offset."""

    length: int
    rope_delta: int
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    @property
    def nbytes(self) -> int:
        return sum(keys.nbytes + values.nbytes for keys, values in self.layers)


@dataclasses.dataclass(frozen=True)
class MediaPrefix:
    """Where a prompt's media prefix ends, and its key in the cache."""

    length: int
    key: tuple


def media_token_ids(config: Any) -> tuple[frozenset[int], int | None]:
    """The placeholder tokens media expand into, and the token that closes a media span (Qwen-VL's vision end)."""
    ids = {getattr(config, name, None) for name in ("image_token_id", "video_token_id", "image_token_index")}
    return frozenset(token for token in ids if token is not None), getattr(config, "vision_end_token_id", None)


def media_prefix(input_ids: torch.Tensor, media_ids: tuple[str, ...], placeholders: frozenset[int],
                 end_token: int | None) -> MediaPrefix | None:
    """The media prefix of one prompt's ``input_ids`` ``(L,)``: up to its last media token (and the token closing
    it); ``None`` when the prompt has no media, any of its media has no identity, or nothing follows the prefix."""
    if not media_ids or not placeholders:
        return None
    is_media = torch.isin(input_ids, torch.tensor(sorted(placeholders), dtype=input_ids.dtype))
    where = is_media.nonzero()
    if not len(where):
        return None
    length = int(where[-1]) + 1
    if end_token is not None and length < len(input_ids) and int(input_ids[length]) == end_token:
        length += 1
    if length >= len(input_ids):
        return None
    digest = hashlib.sha256(input_ids[:length].to(torch.int64).numpy().tobytes()).hexdigest()
    return MediaPrefix(length, (PREFIX, digest, media_ids))


def slice_prefix(layers: Any, row: int, start: int, prefix: MediaPrefix, rope_delta: int) -> CachedPrefix:
    """Row ``row``'s prefix (its real tokens begin at column ``start``) out of a prefill's cache layers, copied."""
    end = start + prefix.length
    return CachedPrefix(
        prefix.length, rope_delta,
        tuple((layer.keys[row:row + 1, :, start:end].clone(), layer.values[row:row + 1, :, start:end].clone())
              for layer in layers),
    )
