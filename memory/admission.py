"""What one request will cost a replica beyond its weights, and whether it may start now.

A request's cost, predicted from the model config and the request's shape before it runs:

* **KV cache**: ``2 (K, V) x layers x kv_heads x head_dim x dtype bytes`` per token, for the
  prompt (text plus visual tokens) and every token it may generate (``max_tokens``);
* **vision encoder**: the tower runs one layer at a time over every patch of the request's
  images and frames; its widest layer holds about 8 activations of ``patches x width``
  (qkv, attention output, the MLP's up projection) at the compute dtype;
* **logits**: the vocabulary in fp32 for the request's row, twice (scores and softmax).

Vision activations and logits are transient (prefill runs one request at a time), but a
request is admitted only while the sum of every admitted request's whole cost fits the
headroom, so a burst of prefills can never add up past it.

Example, Qwen2-VL-2B's text widths (28 layers, 2 kv heads of 128) in bf16: 28 KiB a token;
a 16-frame 448x448 video is 16 x 1024 patches = 16384 patches, 4096 visual tokens; with 64 text
tokens and ``max_tokens`` 512 that is 4672 tokens x 28 KiB = 128 MiB of KV cache, plus 16384
patches x 1280 x 2 B x 8 = 320 MiB in the vision tower.
"""

import dataclasses
from typing import Any, Literal

FP32_BYTES = 4
VISION_WORKING_FACTOR = 8


@dataclasses.dataclass(frozen=True)
class RequestCostModel:
    """Per-token, per-patch and per-row prices for one model at one compute dtype."""

    kv_bytes_per_token: int
    vision_bytes_per_patch: int
    logits_bytes_per_row: int

    @classmethod
    def from_config(cls, config: Any, *, dtype_bytes: int) -> "RequestCostModel":
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        num_heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // num_heads
        kv_heads = getattr(text, "num_key_value_heads", None) or num_heads
        vision = getattr(config, "vision_config", None)
        width = (getattr(vision, "embed_dim", None) or getattr(vision, "hidden_size", 0)) if vision is not None else 0
        return cls(
            kv_bytes_per_token=2 * text.num_hidden_layers * kv_heads * head_dim * dtype_bytes,
            vision_bytes_per_patch=width * dtype_bytes * VISION_WORKING_FACTOR,
            logits_bytes_per_row=text.vocab_size * FP32_BYTES * 2,
        )

    def predict(self, *, prompt_tokens: int, max_new_tokens: int, visual_patches: int) -> "RequestCost":
        return RequestCost(
            kv_cache_bytes=self.kv_bytes_per_token * (prompt_tokens + max_new_tokens),
            vision_bytes=self.vision_bytes_per_patch * visual_patches,
            logits_bytes=self.logits_bytes_per_row,
        )


@dataclasses.dataclass(frozen=True)
class RequestCost:
    kv_cache_bytes: int
    vision_bytes: int
    logits_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.kv_cache_bytes + self.vision_bytes + self.logits_bytes

    def to_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "total_bytes": self.total_bytes}


Admission = Literal["admit", "wait", "never_fits"]


def admission_decision(
    *, predicted_bytes: int, admitted_bytes: int, headroom_bytes: int, running: int, max_batch_size: int
) -> Admission:
    """Whether a request may join the running batch now.

    ``never_fits``: even alone it exceeds the headroom (make it smaller, or hand it off);
    ``wait``: the batch is full, or the admitted requests leave too little room;
    ``admit``: it fits beside them. Example: 6 GiB headroom, 4.5 GiB admitted, a 2 GiB request
    waits; once a 1 GiB request finishes (3.5 GiB admitted) it is admitted.
    """
    if predicted_bytes > headroom_bytes:
        return "never_fits"
    if running >= max_batch_size or admitted_bytes + predicted_bytes > headroom_bytes:
        return "wait"
    return "admit"
