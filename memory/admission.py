"""What one request will cost a replica beyond its weights, and whether it may start now.

A request's cost, predicted from the model config and the request's shape before it runs:

* **KV cache**: ``2 (K, V) x layers x kv_heads x head_dim x dtype bytes`` per token, for the
  prompt (text plus visual tokens) and every token it may generate (``max_tokens``);
* **vision encoder**: the tower runs one layer at a time over every patch of the request's
  images and frames; its widest layer holds about 8 activations of ``patches x width``
  (qkv, attention output, the MLP's up projection) at the compute dtype;
* **prefill activations**: the decoder runs one layer at a time over the prompt; its widest layer
  holds about ``4 x intermediate + 4 x hidden`` values a token (gate, up, their product, the hidden
  states), attention scores of ``heads x prompt x prompt`` in fp32 where the kernel materialises them
  (CPU with a padding mask; not CUDA's memory-efficient kernel), the mask, and the last position's
  logits in fp32.

Vision and prefill activations last one prefill; the KV cache lasts the request. A request is admitted
only while the batch's predicted peak fits the headroom (:func:`batch_bytes`): every row's KV cache,
left-padded to the longest row, plus the prefill of the requests joining now.

**Inputs** are counted exactly, in bytes, where they share the compute memory: on the CPU a request's
frames and images and the processor's tensors (pixel values, ids) sit in the same RAM as the batch from
the moment it is queued (the tensors until its prefill, the frames until it ends), so every request in
the replica, waiting or running, is priced for them; on CUDA they stay in host memory and only the
tensors copied for a prefill count, during that prefill.

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
class RequestSize:
    """A request as the cost model sees it: its prompt, its answer, its patches and its inputs' bytes."""

    prompt_tokens: int
    max_new_tokens: int
    visual_patches: int = 0
    input_bytes: int = 0  # the processor's tensors (ids, masks, pixel values)
    media_bytes: int = 0  # its frames and images (RGB bytes)


@dataclasses.dataclass(frozen=True)
class RequestCostModel:
    """Per-token, per-patch and per-row prices for one model at one compute dtype."""

    kv_bytes_per_token: int
    vision_bytes_per_patch: int
    logits_bytes_per_row: int
    prefill_bytes_per_token: int = 0  # the decoder's widest layer over the prompt: 4 x intermediate + 4 x hidden
    attention_bytes_per_token_pair: int = 0  # heads x fp32 scores (and the mask) over prompt x prompt
    inputs_in_compute_memory: bool = True  # CPU: queued inputs share the batch's RAM; CUDA: host memory, apart

    @classmethod
    def from_config(cls, config: Any, *, dtype_bytes: int, device: str = "cpu") -> "RequestCostModel":
        """``device``: on the CPU, attention with a padding mask materialises its fp32 scores (``heads`` per
        token pair); on CUDA, SDPA's memory-efficient kernel does not, and only the mask is priced."""
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        num_heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // num_heads
        kv_heads = getattr(text, "num_key_value_heads", None) or num_heads
        vision = getattr(config, "vision_config", None)
        width = (getattr(vision, "embed_dim", None) or getattr(vision, "hidden_size", 0)) if vision is not None else 0
        intermediate = getattr(text, "intermediate_size", 4 * text.hidden_size)
        return cls(
            kv_bytes_per_token=2 * text.num_hidden_layers * kv_heads * head_dim * dtype_bytes,
            vision_bytes_per_patch=width * dtype_bytes * VISION_WORKING_FACTOR,
            logits_bytes_per_row=text.vocab_size * FP32_BYTES * 2,
            prefill_bytes_per_token=(4 * intermediate + 4 * text.hidden_size) * dtype_bytes,
            attention_bytes_per_token_pair=((num_heads if device == "cpu" else 0) + 1) * FP32_BYTES,
            inputs_in_compute_memory=device == "cpu",
        )

    def prefill_bytes(self, rows: int, longest_prompt: int) -> int:
        """Activations of one prefill pass over ``rows`` prompts left-padded to ``longest_prompt`` tokens."""
        return rows * (
            longest_prompt * self.prefill_bytes_per_token
            + longest_prompt * longest_prompt * self.attention_bytes_per_token_pair
            + self.logits_bytes_per_row
        )

    def predict(
        self, *, prompt_tokens: int, max_new_tokens: int, visual_patches: int, input_bytes: int = 0, media_bytes: int = 0
    ) -> "RequestCost":
        """The request alone. ``input_bytes``: the processor's tensors; ``media_bytes``: its frames and images."""
        return RequestCost(
            kv_cache_bytes=self.kv_bytes_per_token * (prompt_tokens + max_new_tokens),
            vision_bytes=self.vision_bytes_per_patch * visual_patches,
            prefill_bytes=self.prefill_bytes(1, prompt_tokens),
            input_bytes=input_bytes + (media_bytes if self.inputs_in_compute_memory else 0),
        )

    def price(self, size: RequestSize) -> "RequestCost":
        """:meth:`predict` for a :class:`RequestSize`."""
        return self.predict(**dataclasses.asdict(size))


@dataclasses.dataclass(frozen=True)
class RequestCost:
    kv_cache_bytes: int
    vision_bytes: int
    prefill_bytes: int  # the decoder's activations over its prompt, and its logits
    # Its inputs in the compute memory at their largest: on the CPU its frames plus the processor's tensors,
    # on CUDA the tensors copied for its prefill.
    input_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.kv_cache_bytes + self.vision_bytes + self.prefill_bytes + self.input_bytes

    def to_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "total_bytes": self.total_bytes}


Admission = Literal["admit", "wait", "never_fits"]


def batch_bytes(
    costs: RequestCostModel,
    *,
    row_tokens: list[int],
    prefill_prompts: list[int] = (),
    vision_bytes: int = 0,
    input_bytes: int = 0,
) -> int:
    """What a batch costs at its peak: the KV cache of every row, left-padded to the longest
    (``rows x longest x per-token``), plus the prefill of the rows joining it now (one pass, padded to
    the longest of their prompts), their vision-encoder activations, and ``input_bytes`` of inputs held
    in the same memory (see the module's note on inputs).

    Example: a 4672-token video row beside seven 96-token text rows holds 8 x 4672 tokens of cache, not
    4672 + 7 x 96: admitting the text rows costs 7 x 4672 tokens.
    """
    kv = len(row_tokens) * max(row_tokens) * costs.kv_bytes_per_token if row_tokens else 0
    prefill = costs.prefill_bytes(len(prefill_prompts), max(prefill_prompts)) if prefill_prompts else 0
    return kv + prefill + vision_bytes + input_bytes


def admission_decision(
    *, alone_bytes: int, batch_bytes_with: int, headroom_bytes: int, running: int, max_batch_size: int
) -> Admission:
    """Whether a request may join the running batch now.

    ``alone_bytes``: the request's cost by itself; ``batch_bytes_with``: the batch's cost with it
    (:func:`batch_bytes`). ``never_fits``: even alone it exceeds the headroom (make it smaller, or hand it
    off); ``wait``: the batch is full, or would outgrow the headroom with it; ``admit``: it fits. Example:
    6 GiB headroom, a batch predicted at 4.5 GiB that a 2 GiB request would take to 6.5 GiB: it waits;
    once a request leaves and the batch with it is 5.5 GiB, it is admitted. A request that fits alone
    always starts into an empty batch.
    """
    if alone_bytes > headroom_bytes:
        return "never_fits"
    if running == 0:
        return "admit"  # into an empty batch: what others hold while they wait is no reason to wait
    if running >= max_batch_size or batch_bytes_with > headroom_bytes:
        return "wait"
    return "admit"
