"""Prefill and decode: the forward passes a batch scheduler runs on a transformers model.

:meth:`HfBatchModel.prefill_many` runs the prompts admitted together in one pass (ids
left-padded, media concatenated: pixel values, grids, multimodal RoPE) and returns their caches
as a :class:`~models.engines.transformers.kv_batch.KvBatch` plus the logits of each first new token; ``prefill``
is the one-request case.
:meth:`HfBatchModel.decode` runs one step for every row of a joined batch, with each
row's own rotary position, and leaves the new keys and values in the batch's cache.

Multimodal RoPE (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) places text after media at
``prompt length + rope delta``; the delta the model computed in prefill is read back
and kept per row, so rows with different media decode at their own positions.
"""

import dataclasses
from typing import Any, Callable

import torch
import transformers

from models.adapters.chat_template import media_ids_by_modality
from models.engines.transformers.encoder_reuse import PIXEL_INPUTS, EncoderReuse, supports_encoder_reuse
from models.engines.transformers.kv_batch import KvBatch, cache_of, left_pad
from models.engines.transformers.prefix_reuse import CachedPrefix, MediaPrefix, media_prefix, media_token_ids, slice_prefix
from models.fault_injection import raise_if_simulated_broken_link, raise_if_simulated_out_of_memory
from models.media.media_cache import MediaCache
from models.media.request_shrink import media_pixels
from models.requests import GenerationRequest


@dataclasses.dataclass(frozen=True)
class PreparedPrompt:
    """A request turned into model inputs by the processor, with what its cost depends on."""

    request: GenerationRequest
    inputs: Any  # the processor's BatchFeature, on the CPU until its prefill
    prompt_tokens: int
    visual_patches: int  # vision-encoder patches over all images and frames
    input_bytes: int = 0  # the processor's tensors (ids, masks, pixel values), exactly; dropped after the prefill
    media_bytes: int = 0  # the request's own frames and images (RGB bytes), held until it ends
    media_ids: dict[str, tuple[str | None, ...]] = dataclasses.field(default_factory=dict)  # by modality, in order
    prefix: MediaPrefix | None = None  # its media prefix, when every media part has an identity

    def without_inputs(self) -> "PreparedPrompt":
        """After its prefill: only the KV cache is needed, so the processor's tensors can go."""
        return dataclasses.replace(self, inputs=None, input_bytes=0)


class HfBatchModel:
    """A loaded transformers model's batched steps (prefill, then decode over a KV batch) and its processor: what the
    batched engine (:class:`models.engines.transformers.scheduler.BatchScheduler`, the :class:`~models.engines.contract.Engine`) drives."""

    def __init__(self, model: transformers.PreTrainedModel, processor: Any, prepare: Any, *, link: str = "") -> None:
        self._model = model
        self._link = link  # the loading chain's link that loaded the model (fault drills name it)
        self._prepare = prepare  # (request, on_device=) -> (inputs, prompt tokens); raises the adapter's input errors
        self.tokenizer = processor.tokenizer
        self.device = model.device
        self.eos_ids = eos_token_ids(model.generation_config)
        output = model.get_output_embeddings()
        self.vocab_size = output.out_features if output is not None else model.config.get_text_config().vocab_size
        self._inner = getattr(model, "model", None)
        self._mrope = hasattr(self._inner, "rope_deltas")
        self._reuse: EncoderReuse | None = None
        self._prefixes: MediaCache | None = None
        self._room_bytes: Callable[[], int] = lambda: 0
        self._placeholders, self._end_token = media_token_ids(model.config)

    def reuse_media(self, cache: MediaCache, room_bytes: Callable[[], int]) -> bool:
        """Keep, in ``cache``, the vision tower's outputs (:mod:`~models.engines.transformers.encoder_reuse`) and the
        KV of prompts' media prefixes (:mod:`~models.engines.transformers.prefix_reuse`) from now on; ``room_bytes``:
        what the headroom has spare now. Whether this model can (``False``: every prefill runs all of it, as before)."""
        if not supports_encoder_reuse(self._model):
            return False
        self._reuse = EncoderReuse(self._model, cache, room_bytes)
        self._prefixes, self._room_bytes = cache, room_bytes
        return True

    @property
    def kv_dtype_bytes(self) -> int:
        return self._model.get_input_embeddings().weight.element_size()

    def prepare(self, request: GenerationRequest) -> PreparedPrompt:
        inputs, prompt_tokens = self._prepare(request, on_device=False)  # moved at prefill: queued inputs hold no device memory
        media_ids = media_ids_by_modality(request.messages)
        patches = 0
        for grid in ("image_grid_thw", "video_grid_thw"):
            if inputs.get(grid) is not None:
                patches += int(inputs[grid].prod(dim=-1).sum())
        return PreparedPrompt(
            request=request,
            inputs=inputs,
            prompt_tokens=prompt_tokens,
            visual_patches=patches,
            input_bytes=sum(value.nbytes for value in inputs.values() if isinstance(value, torch.Tensor)),
            media_bytes=3 * media_pixels(request),
            media_ids=media_ids,
            prefix=self._media_prefix(request, media_ids, inputs["input_ids"][0]),
        )

    def _media_prefix(
        self, request: GenerationRequest, media_ids: dict[str, tuple[str | None, ...]], input_ids: torch.Tensor
    ) -> MediaPrefix | None:
        if self._prefixes is None or None in (media_id for ids in media_ids.values() for media_id in ids):
            return None  # a part without an identity: its prefix cannot be told from another's
        return media_prefix(input_ids, request.media_ids, self._placeholders, self._end_token)

    def batchable(self, prepared: PreparedPrompt) -> bool:
        """Whether this request's inputs can be prefilled together with others' (padded ids, concatenated media)."""
        return set(prepared.inputs.keys()) <= _PADDED.keys() | _CONCATENATED

    def prefill(self, prepared: PreparedPrompt) -> tuple[KvBatch, torch.Tensor]:
        """One request's prompt through the model: its one-row batch and its first token's logits ``(vocab,)``."""
        batch, logits = self.prefill_many([prepared])
        return batch, logits[0]

    def prefill_many(self, prompts: list[PreparedPrompt]) -> tuple[KvBatch, torch.Tensor]:
        """Several prompts in one forward pass (left-padded, their media concatenated): a batch of their rows and
        each first token's logits ``(rows, vocab)``. One large pass keeps the matrix units busier than many small.
        A prompt whose media prefix is cached is prefilled from it alone (only its suffix runs), and its row takes
        its place among the others."""
        raise_if_simulated_broken_link(self._link)
        for prepared in prompts:
            raise_if_simulated_out_of_memory(prepared.request)
        cached = self._cached_prefixes(prompts)
        if not cached:
            return self._prefill_together(prompts)
        rows: list[KvBatch | None] = [None] * len(prompts)
        logits: list[torch.Tensor | None] = [None] * len(prompts)
        fresh = [index for index in range(len(prompts)) if index not in cached]
        if fresh:
            batch, fresh_logits = self._prefill_together([prompts[index] for index in fresh])
            for position, index in enumerate(fresh):
                rows[index], logits[index] = batch.row(position), fresh_logits[position]
        for index, prefix in cached.items():
            rows[index], logits[index] = self._prefill_after(prompts[index], prefix)
        return KvBatch.concatenate(rows), torch.stack(logits)

    def _cached_prefixes(self, prompts: list[PreparedPrompt]) -> dict[int, CachedPrefix]:
        """The prompts whose media prefix the cache holds, by their place; each counted as a hit for its media."""
        found: dict[int, CachedPrefix] = {}
        if self._prefixes is None:
            return found
        for index, prepared in enumerate(prompts):
            prefix = self._prefixes.peek(prepared.prefix.key) if prepared.prefix is not None else None
            if prefix is not None:
                found[index] = prefix
                self._prefixes.count_hits(len(prepared.prefix.key[2]))
        return found

    def _prefill_after(self, prepared: PreparedPrompt, prefix: CachedPrefix) -> tuple[KvBatch, torch.Tensor]:
        """One prompt from its cached media prefix: only the tokens after it run, at the positions they have in the
        whole prompt; a one-row batch and the first token's logits."""
        suffix = prepared.inputs["input_ids"][:, prefix.length:].to(self.device)
        total = prefix.length + suffix.shape[1]
        mask = torch.ones((1, total), dtype=torch.long, device=self.device)
        start = prefix.length + prefix.rope_delta
        positions = torch.arange(start, start + suffix.shape[1], device=self.device)[None]
        cache = cache_of([(keys.to(self.device), values.to(self.device)) for keys, values in prefix.layers])
        if self._mrope:
            self._inner.rope_deltas = None
        with torch.inference_mode():
            outputs = self._model(input_ids=suffix, attention_mask=mask, position_ids=positions,
                                  **{CACHE_ARGUMENT: cache}, use_cache=True, logits_to_keep=1)
        next_positions = torch.tensor([start + suffix.shape[1]], dtype=torch.long, device=self.device)
        return KvBatch.from_prefill(_output_cache(outputs), attention_mask=mask, next_positions=next_positions), outputs.logits[0, -1]

    def _keep_prefixes(self, prompts: list[PreparedPrompt], batch: KvBatch) -> None:
        """After a prefill: each identified prompt's media prefix, sliced from its row, into the cache."""
        length = batch.length
        for row, prepared in enumerate(prompts):
            prefix = prepared.prefix
            if prefix is None or self._prefixes.peek(prefix.key) is not None:
                continue
            start = length - prepared.prompt_tokens  # the row's left padding
            rope_delta = int(batch.next_positions[row]) - prepared.prompt_tokens
            kept = slice_prefix(batch.cache.layers, row, start, prefix, rope_delta)
            self._prefixes.put(prefix.key, kept, kept.nbytes, media_id=prefix.key[2][0], room_bytes=self._room_bytes())

    def _prefill_together(self, prompts: list[PreparedPrompt]) -> tuple[KvBatch, torch.Tensor]:
        inputs = prompts[0].inputs if len(prompts) == 1 else self._collate(prompts)
        if self._reuse is not None:
            extra_inputs = {"mm_encoder_outputs": self._reuse.encoder_outputs(prompts, self.device)}
            inputs = {key: value for key, value in inputs.items() if key not in PIXEL_INPUTS}
        else:
            extra_inputs = {}
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        mask = inputs["attention_mask"]
        extra: dict[str, Any] = {}
        if not self._mrope:
            # Positions count real tokens only, so a left-padded row starts at 0 like a row alone.
            extra["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        else:
            self._inner.rope_deltas = None  # the model keeps the last prefill's deltas; never reuse another row's
        with torch.inference_mode():
            outputs = self._model(**inputs, **extra, **extra_inputs, use_cache=True, logits_to_keep=1)
        length = mask.shape[1]
        if self._mrope:
            # Multimodal RoPE: the model placed text after media at ``length + delta`` (per row, padding counted).
            deltas = self._inner.rope_deltas
            next_positions = length + (deltas.reshape(-1).long() if deltas is not None else torch.zeros(len(prompts), dtype=torch.long))
        else:
            next_positions = mask.long().sum(-1)
        batch = KvBatch.from_prefill(_output_cache(outputs), attention_mask=mask.long(), next_positions=next_positions.to(mask.device))
        if self._prefixes is not None:
            self._keep_prefixes(prompts, batch)
        return batch, outputs.logits[:, -1]

    def _collate(self, prompts: list[PreparedPrompt]) -> dict[str, torch.Tensor]:
        length = max(int(prepared.inputs["input_ids"].shape[1]) for prepared in prompts)
        collated: dict[str, torch.Tensor] = {}
        for key in {key for prepared in prompts for key in prepared.inputs.keys()}:
            values = [prepared.inputs[key] for prepared in prompts if prepared.inputs.get(key) is not None]
            if key in _PADDED:
                pad = self.tokenizer.pad_token_id if key == "input_ids" else _PADDED[key]
                collated[key] = torch.cat([left_pad(value, length, pad or 0) for value in values], dim=0)
            else:
                collated[key] = torch.cat(values, dim=0)
        return collated

    def decode(self, batch: KvBatch) -> torch.Tensor:
        """One token for every row: ``(rows, vocab)`` logits; the batch's cache grows by one column."""
        ones = torch.ones((batch.size, 1), dtype=batch.attention_mask.dtype, device=batch.attention_mask.device)
        with torch.inference_mode():
            outputs = self._model(
                input_ids=batch.last_tokens[:, None],
                attention_mask=torch.cat([batch.attention_mask, ones], dim=1),
                position_ids=batch.next_positions[:, None],
                **{CACHE_ARGUMENT: batch.cache},
                use_cache=True,
            )
        return outputs.logits[:, -1]


# transformers 5.24 calls the KV cache ``cache`` (argument and output); the versions vLLM's environments pin (5.19,
# 5.20) call it ``past_key_values``. The engine runs in both (a transformers link of a group on engine: vllm).
CACHE_ARGUMENT = "cache" if "cache" in transformers.modeling_outputs.CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _output_cache(outputs: Any) -> Any:
    return getattr(outputs, CACHE_ARGUMENT)


# Per-token inputs, left-padded to the longest prompt (the value pads them), and media inputs that stack.
_PADDED = {"input_ids": 0, "attention_mask": 0, "mm_token_type_ids": 0}
_CONCATENATED = {"pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"}


def eos_token_ids(generation_config: transformers.GenerationConfig) -> set[int]:
    eos = generation_config.eos_token_id
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(token) for token in eos}
