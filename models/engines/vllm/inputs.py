"""A request in vLLM's terms: the prompt from the model's chat template with our decoded media beside it, and
the sampling parameters that honour every decoding option we take.

vLLM never decodes a file here: images and the frames our sampler chose (seek-based, through the frame cache) are
handed over as arrays, each video with its frames' times, so both engines see the same frames and the same prompt. Each item carries our media identity
(``multi_modal_uuids``), so vLLM's caches key on it.
"""

from typing import Any

import numpy as np
from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

from models.adapters.chat_template import frame_times, media_ids_by_modality, to_template_chat
from models.engines.contract import check_options
from models.requests import GenerationRequest, TokenLogprob


class PromptBuilder:
    """Renders requests with the checkpoint's processor (its chat template), as the transformers engine does."""

    def __init__(self, processor: Any, vocab_size: int) -> None:
        self._processor = processor
        self._vocab_size = vocab_size

    def build(self, request: GenerationRequest) -> dict[str, Any]:
        """vLLM's prompt: the template's text and the request's media, in order."""
        chat, images, videos = to_template_chat(request.messages)
        text = self._processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        media: dict[str, Any] = {}
        if images:
            media["image"] = [np.ascontiguousarray(pixels) for pixels in images]
        if videos:
            media["video"] = [(part.frames, frame_times(part)) if part.timestamps_s else part.frames for part in videos]
        prompt: dict[str, Any] = {"prompt": text}
        if media:
            prompt["multi_modal_data"] = media
            # Our media identity as vLLM's item ids: its processor, encoder and prefix caches key on them and never
            # hash the pixels again (None: an item with no identity, which vLLM hashes itself).
            ids = media_ids_by_modality(request.messages)
            uuids = {modality: list(ids[modality]) for modality in media if any(ids[modality])}
            if uuids:
                prompt["multi_modal_uuids"] = uuids
        return prompt

    def sampling_params(self, request: GenerationRequest) -> SamplingParams:
        """Every option of :class:`~models.requests.DecodingOptions`, by vLLM's name for it; streamed as deltas."""
        options = request.options
        check_options(request, self._vocab_size)
        structured = None
        if options.response_format is not None:
            # The engine compiles them with xgrammar without free whitespace, as ours (VllmAdapter's engine args).
            if options.response_format.kind == "json_schema":
                structured = StructuredOutputsParams(json=options.response_format.schema_json)
            else:
                structured = StructuredOutputsParams(json_object=True)
        return SamplingParams(
            n=1,
            max_tokens=request.max_new_tokens,
            temperature=request.temperature,
            seed=request.seed,
            top_p=options.top_p,
            top_k=options.top_k,
            min_p=options.min_p,
            presence_penalty=options.presence_penalty,
            frequency_penalty=options.frequency_penalty,
            repetition_penalty=options.repetition_penalty,
            logit_bias=dict(options.logit_bias) or None,
            min_tokens=options.min_tokens,
            ignore_eos=options.ignore_eos,
            stop=list(options.stop) or None,
            logprobs=options.top_logprobs if options.logprobs else None,
            structured_outputs=structured,
            output_kind=RequestOutputKind.DELTA,
            skip_special_tokens=True,
        )


def token_logprobs(token_ids: Any, logprobs: Any, top: int) -> tuple[TokenLogprob, ...]:
    """vLLM's per-token ``{token id: Logprob}`` maps as ours: the chosen token, then the ``top`` most likely."""
    pieces = []
    for token_id, ranked in zip(token_ids, logprobs or (), strict=False):
        chosen = ranked[token_id]
        best = sorted((entry for entry in ranked.values() if entry.rank is not None and entry.rank <= top),
                      key=lambda entry: entry.rank)
        pieces.append(
            TokenLogprob(
                token=chosen.decoded_token or "",
                logprob=float(chosen.logprob),
                top=tuple((entry.decoded_token or "", float(entry.logprob)) for entry in best[:top]),
            )
        )
    return tuple(pieces)
