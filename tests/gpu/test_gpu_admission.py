"""Admission's prediction against what CUDA really allocates, for one batch of mixed requests.

CPU twin: tests/test_admission.py (the KV cache predicted to the byte). Here the mid-size Qwen2-VL
(bench/mid_model.py) runs in bf16 on the GPU; a batch of text, image and video requests is prefilled
together and decoded to its ``max_tokens``; the peak above the weights
(``torch.cuda.max_memory_allocated``) must be covered by the batch's prediction
(:func:`memory.admission.batch_bytes`), and within 15% of it. The figures are printed for the closing note.
"""

import pytest
import torch
from mixed_requests import mixed_requests

from bench.mid_model import ensure_mid_model
from memory.admission import RequestCostModel, batch_bytes
from memory.strategy import parse_strategy
from models.adapters.hf_adapter import HuggingFaceVisionLanguageAdapter
from models.requests import GenerationRequest

pytestmark = pytest.mark.gpu
NEW_TOKENS = 64


def _requests() -> list[GenerationRequest]:
    return mixed_requests(new_tokens=NEW_TOKENS, scale=4)


def test_the_predicted_bytes_cover_the_measured_peak_of_a_batch(tmp_path, record_figure):
    adapter = HuggingFaceVisionLanguageAdapter(str(ensure_mid_model(tmp_path / "mid")), strategy=parse_strategy("bf16", "cuda"))
    adapter.load()
    engine = adapter.batch_engine()
    costs = RequestCostModel.from_config(adapter.model.config, dtype_bytes=engine.kv_dtype_bytes, device="cuda")
    prompts = [engine.prepare(request) for request in _requests()]
    longest = max(p.prompt_tokens for p in prompts) + NEW_TOKENS  # prefilled together: padded to the longest
    predicted = batch_bytes(
        costs,
        row_tokens=[longest] * len(prompts),
        prefill_prompts=[p.prompt_tokens for p in prompts],
        vision_bytes=sum(costs.vision_bytes_per_patch * p.visual_patches for p in prompts),
    )
    torch.cuda.synchronize()
    weights = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()

    batch, logits = engine.prefill_many(prompts)
    batch.last_tokens = torch.argmax(logits, dim=-1)
    for _ in range(NEW_TOKENS - 1):
        batch.advance(torch.argmax(engine.decode(batch), dim=-1))
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() - weights

    record_figure("batch_peak_bytes", {"predicted": predicted, "measured": measured, "ratio": round(measured / predicted, 3)})
    assert measured <= predicted
    assert measured >= 0.85 * predicted
