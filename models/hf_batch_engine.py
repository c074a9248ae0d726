"""Prefill one request, decode many: the forward passes a batch scheduler runs on a transformers model.

:meth:`HfBatchEngine.prefill` runs one request alone, with its own media (pixel
values, grids, multimodal RoPE), and returns its cache as a one-row
:class:`~models.kv_batch.KvBatch` plus the logits of its first new token.
:meth:`HfBatchEngine.decode` runs one step for every row of a joined batch, with each
row's own rotary position, and leaves the new keys and values in the batch's cache.

Multimodal RoPE (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) places text after media at
``prompt length + rope delta``; the delta the model computed in prefill is read back
and kept per row, so rows with different media decode at their own positions.
"""

import dataclasses
from typing import Any

import torch
import transformers

from memory.fault_injection import raise_if_simulated_out_of_memory
from models.base import GenerationRequest
from models.kv_batch import KvBatch


@dataclasses.dataclass(frozen=True)
class PreparedPrompt:
    """A request turned into model inputs by the processor, with what its cost depends on."""

    request: GenerationRequest
    inputs: Any  # the processor's BatchFeature, on the model's device
    prompt_tokens: int
    visual_patches: int  # vision-encoder patches over all images and frames


class HfBatchEngine:
    def __init__(self, model: transformers.PreTrainedModel, processor: Any, prepare: Any) -> None:
        self._model = model
        self._processor = processor
        self._prepare = prepare  # request -> (inputs on device, prompt tokens); raises the adapter's input errors
        self.tokenizer = processor.tokenizer
        self.device = model.device
        self.eos_ids = eos_token_ids(model.generation_config)
        self._inner = getattr(model, "model", None)
        self._mrope = hasattr(self._inner, "rope_deltas")

    @property
    def kv_dtype_bytes(self) -> int:
        return self._model.get_input_embeddings().weight.element_size()

    def prepare(self, request: GenerationRequest) -> PreparedPrompt:
        inputs, prompt_tokens = self._prepare(request, on_device=False)  # moved at prefill: queued inputs hold no device memory
        patches = 0
        for grid in ("image_grid_thw", "video_grid_thw"):
            if inputs.get(grid) is not None:
                patches += int(inputs[grid].prod(dim=-1).sum())
        return PreparedPrompt(request=request, inputs=inputs, prompt_tokens=prompt_tokens, visual_patches=patches)

    def prefill(self, prepared: PreparedPrompt) -> tuple[KvBatch, torch.Tensor]:
        """The request's prompt through the model: its one-row batch and its first token's logits ``(vocab,)``."""
        raise_if_simulated_out_of_memory(prepared.request)
        if self._mrope:
            self._inner.rope_deltas = None  # the model keeps the last prefill's deltas; never reuse another row's
        with torch.inference_mode():
            outputs = self._model(**prepared.inputs.to(self.device), use_cache=True, logits_to_keep=1)
        delta = 0
        if self._mrope and self._inner.rope_deltas is not None:
            delta = int(self._inner.rope_deltas.reshape(-1)[0])
        logits = outputs.logits[0, -1]
        row = KvBatch.single(outputs.cache, next_position=prepared.prompt_tokens + delta, last_token=0)
        return row, logits

    def decode(self, batch: KvBatch) -> torch.Tensor:
        """One token for every row: ``(rows, vocab)`` logits; the batch's cache grows by one column."""
        ones = torch.ones((batch.size, 1), dtype=batch.attention_mask.dtype, device=batch.attention_mask.device)
        with torch.inference_mode():
            outputs = self._model(
                input_ids=batch.last_tokens[:, None],
                attention_mask=torch.cat([batch.attention_mask, ones], dim=1),
                position_ids=batch.next_positions[:, None],
                cache=batch.cache,
                use_cache=True,
            )
        return outputs.logits[:, -1]


def eos_token_ids(generation_config: transformers.GenerationConfig) -> set[int]:
    eos = generation_config.eos_token_id
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(token) for token in eos}
