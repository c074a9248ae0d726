"""The running batch's KV cache: rows of different lengths, left-padded into one cache.

Requests are prefilled (alone, or several left-padded together) into a ``DynamicCache``.
:class:`KvBatch` joins such caches into one of batch B by left-padding every layer's keys
and values to the longest row, with an attention mask that marks the padding, so one forward pass decodes a token for
every row. A row that finishes leaves at once; columns that only padding still
uses are trimmed away.

Example: rows of 30 and 12 cached tokens join as a 2 x 30 cache whose mask is
``[1]*30`` and ``[0]*18 + [1]*12``; the next decode step appends one column to
both. When the 30-token row leaves, the 18 leading pad columns go with it.

Only full-attention ``DynamicLayer`` caches are joined (Qwen2-VL, Qwen2.5-VL,
Qwen3-VL, LLaVA-style decoders); :func:`joinable` tells whether a model's cache is.
"""

import dataclasses

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class KvBatchError(RuntimeError):
    """A cache this batch cannot join (sliding-window, quantized or linear-attention layers)."""


def joinable(cache: DynamicCache) -> bool:
    """Whether every layer of ``cache`` is a plain, filled full-attention ``DynamicLayer``."""
    return all(type(layer) is DynamicLayer and layer.is_initialized for layer in cache.layers)


@dataclasses.dataclass
class KvBatch:
    """The cache, mask, next positions and last tokens of the rows decoding together.

    ``next_positions[i]`` is the rotary position of row i's next token (the prompt length plus
    the model's rope delta for multimodal RoPE, plus the tokens generated so far).
    """

    cache: DynamicCache
    attention_mask: torch.Tensor  # (B, L) long, 0 where a row is padded
    next_positions: torch.Tensor  # (B,) long
    last_tokens: torch.Tensor  # (B,) long

    @classmethod
    def from_prefill(cls, cache: DynamicCache, *, attention_mask: torch.Tensor, next_positions: torch.Tensor) -> "KvBatch":
        """The rows a prefill left in ``cache`` (left-padded as ``attention_mask`` says); last tokens are set after sampling."""
        if not joinable(cache):
            kinds = sorted({type(layer).__name__ for layer in cache.layers})
            raise KvBatchError(f"Cannot batch a cache with layers {kinds}; only full-attention DynamicLayer caches join")
        return cls(
            cache=cache,
            attention_mask=attention_mask,
            next_positions=next_positions,
            last_tokens=torch.zeros(attention_mask.shape[0], dtype=torch.long, device=attention_mask.device),
        )

    @property
    def size(self) -> int:
        return int(self.attention_mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.attention_mask.shape[1])

    def kv_bytes(self) -> int:
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self.cache.layers)

    def join(self, other: "KvBatch") -> None:
        """Append ``other``'s rows after this batch's rows (both left-padded to the longer length)."""
        length = max(self.length, other.length)
        # Keys may be one column ahead of the mask (joined right after a step, before ``advance``): pad them
        # by their own length, which is the mask's plus the same offset in both batches.
        kv_length = max(self.cache.layers[0].keys.shape[-2], other.cache.layers[0].keys.shape[-2])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([left_pad(mine.keys, kv_length), left_pad(theirs.keys, kv_length)], dim=0)
            mine.values = torch.cat([left_pad(mine.values, kv_length), left_pad(theirs.values, kv_length)], dim=0)
        self.attention_mask = torch.cat(
            [left_pad(self.attention_mask, length), left_pad(other.attention_mask, length)], dim=0
        )
        self.next_positions = torch.cat([self.next_positions, other.next_positions])
        self.last_tokens = torch.cat([self.last_tokens, other.last_tokens])

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (in this order), then drop leading columns that are padding in every row."""
        index = torch.tensor(rows, dtype=torch.long, device=self.attention_mask.device)
        mask = self.attention_mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else mask.shape[1]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:, :]
            layer.values = layer.values.index_select(0, index)[:, :, start:, :]
        self.attention_mask = mask[:, start:]
        self.next_positions = self.next_positions.index_select(0, index)
        self.last_tokens = self.last_tokens.index_select(0, index)

    def split(self, rows: int) -> tuple["KvBatch", "KvBatch"]:
        """Two batches of the first ``rows`` rows and the rest: views of this one, no copy until a step."""
        layers = self.cache.layers
        first = cache_of([(layer.keys[:rows], layer.values[:rows]) for layer in layers])
        second = cache_of([(layer.keys[rows:], layer.values[rows:]) for layer in layers])
        return (
            KvBatch(first, self.attention_mask[:rows], self.next_positions[:rows], self.last_tokens[:rows]),
            KvBatch(second, self.attention_mask[rows:], self.next_positions[rows:], self.last_tokens[rows:]),
        )

    def row(self, index: int) -> "KvBatch":
        """Row ``index`` as a one-row batch: views of this one, its left padding kept."""
        rows = slice(index, index + 1)
        cache = cache_of([(layer.keys[rows], layer.values[rows]) for layer in self.cache.layers])
        return KvBatch(cache, self.attention_mask[rows], self.next_positions[rows], self.last_tokens[rows])

    @classmethod
    def concatenate(cls, parts: list["KvBatch"]) -> "KvBatch":
        """One batch of every part's rows, in order (after a step that ran in parts)."""
        joined = KvBatch(
            cache_of([(layer.keys, layer.values) for layer in parts[0].cache.layers]),
            parts[0].attention_mask,
            parts[0].next_positions,
            parts[0].last_tokens,
        )
        for part in parts[1:]:
            joined.join(part)
        return joined

    def advance(self, next_tokens: torch.Tensor) -> None:
        """After a decode step wrote one column: record it in the mask and move each row on one position."""
        ones = torch.ones((self.size, 1), dtype=self.attention_mask.dtype, device=self.attention_mask.device)
        self.attention_mask = torch.cat([self.attention_mask, ones], dim=1)
        self.next_positions = self.next_positions + 1
        self.last_tokens = next_tokens.to(self.last_tokens.device)


def cache_of(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A ``DynamicCache`` holding these keys and values as they are (``DynamicCache(data)`` would copy them)."""
    cache = DynamicCache()
    for keys, values in pairs:
        layer = DynamicLayer()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        cache.layers.append(layer)
    return cache


def left_pad(tensor: torch.Tensor, length: int, value: int = 0) -> torch.Tensor:
    """Pad the sequence dimension (-2 for 4-D keys and values, -1 for 2-D ids and masks) on the left with ``value``."""
    seq_dim = -2 if tensor.dim() == 4 else -1
    missing = length - tensor.shape[seq_dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[seq_dim] = missing
    return torch.cat([tensor.new_full(shape, value), tensor], dim=seq_dim)
