"""Admission's prediction against what CUDA really allocates, for one batch of mixed requests.

CPU twin: tests/test_admission.py (the KV cache predicted to the byte). Here the mid-size Qwen2-VL
(bench/mid_model.py) runs in bf16 on the GPU; a batch of text, image and video requests is prefilled
together and decoded to its ``max_tokens``; the peak above the weights
(``torch.cuda.max_memory_allocated``) must be covered by the sum of the predictions, and within 15%
of it. The figures are printed for the closing note.
"""

import numpy as np
import pytest
import torch

from bench.mid_model import ensure_mid_model
from memory.admission import RequestCostModel
from memory.strategy import parse_strategy
from models.base import ChatMessage, GenerationRequest, ImagePart, TextPart, VideoPart
from models.hf_adapter import HuggingFaceVisionLanguageAdapter

pytestmark = pytest.mark.gpu
NEW_TOKENS = 64


def _requests() -> list[GenerationRequest]:
    rng = np.random.default_rng(0)

    def request(*parts):
        return GenerationRequest(messages=(ChatMessage("user", tuple(parts)),), max_new_tokens=NEW_TOKENS)

    return [
        request(TextPart("What happens?")),
        request(ImagePart(rng.integers(0, 256, (448, 448, 3), dtype=np.uint8)), TextPart("Describe the image.")),
        request(VideoPart(rng.integers(0, 256, (16, 448, 448, 3), dtype=np.uint8)), TextPart("What is in this video?")),
        request(VideoPart(rng.integers(0, 256, (8, 336, 448, 3), dtype=np.uint8)), TextPart("Count the people")),
    ]


def test_the_predicted_bytes_cover_the_measured_peak_of_a_batch(tmp_path):
    adapter = HuggingFaceVisionLanguageAdapter(str(ensure_mid_model(tmp_path / "mid")), strategy=parse_strategy("bf16", "cuda"))
    adapter.load()
    engine = adapter.batch_engine()
    costs = RequestCostModel.from_config(adapter.model.config, dtype_bytes=engine.kv_dtype_bytes)
    prompts = [engine.prepare(request) for request in _requests()]
    predicted = sum(
        costs.predict(prompt_tokens=p.prompt_tokens, max_new_tokens=NEW_TOKENS, visual_patches=p.visual_patches).total_bytes
        for p in prompts
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

    print(f"predicted {predicted} bytes, measured peak {measured} bytes above the weights ({measured / predicted:.3f}x)")
    assert measured <= predicted
    assert measured >= 0.85 * predicted
