"""Request cost prediction and admission: pure arithmetic, and the prediction against a real model's KV cache."""

import pytest
import torch
import transformers

from memory.admission import RequestCostModel, admission_decision
from memory.gpu import allocator_fraction
from models.base import ChatMessage, GenerationRequest, TextPart

GIB = 1024**3


def test_the_cost_model_prices_kv_cache_vision_and_logits_from_the_config(tiny_model_path):
    config = transformers.AutoConfig.from_pretrained(tiny_model_path)
    costs = RequestCostModel.from_config(config, dtype_bytes=4)
    text = config.text_config

    # 2 (K, V) x 2 layers x 2 kv heads x 16 head dim x 4 bytes
    assert costs.kv_bytes_per_token == 2 * text.num_hidden_layers * 2 * 16 * 4 == 512
    assert costs.vision_bytes_per_patch == config.vision_config.embed_dim * 4 * 8
    cost = costs.predict(prompt_tokens=100, max_new_tokens=28, visual_patches=64)
    assert cost.kv_cache_bytes == 128 * 512
    assert cost.vision_bytes == 64 * costs.vision_bytes_per_patch
    assert cost.total_bytes == cost.kv_cache_bytes + cost.vision_bytes + cost.logits_bytes


def test_the_kv_prediction_matches_the_cache_a_real_prefill_and_decode_leave(tiny_adapter):
    engine = tiny_adapter.batch_engine()
    costs = RequestCostModel.from_config(tiny_adapter.model.config, dtype_bytes=engine.kv_dtype_bytes)
    request = GenerationRequest(messages=(ChatMessage("user", (TextPart("How many people are in the frame?"),)),),
                                max_new_tokens=5)
    prepared = engine.prepare(request)
    batch, _ = engine.prefill(prepared)
    for _ in range(request.max_new_tokens):
        engine.decode(batch)
        batch.advance(torch.zeros(1, dtype=torch.long))

    predicted = costs.predict(prompt_tokens=prepared.prompt_tokens, max_new_tokens=5, visual_patches=0)
    assert batch.kv_bytes() == predicted.kv_cache_bytes


@pytest.mark.parametrize(
    ("predicted", "admitted", "running", "expected"),
    [
        (2 * GIB, 0, 0, "admit"),
        (2 * GIB, int(4.5 * GIB), 2, "wait"),  # 6.5 GiB would not fit 6 GiB
        (2 * GIB, int(3.5 * GIB), 2, "admit"),
        (1 * GIB, 0, 8, "wait"),  # the batch is full
        (7 * GIB, 0, 0, "never_fits"),
    ],
)
def test_admission_against_headroom(predicted, admitted, running, expected):
    decision = admission_decision(
        predicted_bytes=predicted, admitted_bytes=admitted, headroom_bytes=6 * GIB, running=running, max_batch_size=8
    )

    assert decision == expected


def test_the_allocator_cap_keeps_the_cuda_context_inside_the_share():
    fraction = allocator_fraction(0.5, total_bytes=80 * GIB, context_bytes=GIB // 2)

    assert fraction == pytest.approx((40 - 0.5) / 80)
    # Two such replicas plus their contexts fit the device.
    assert 2 * (fraction * 80 * GIB + GIB // 2) <= 80 * GIB
    with pytest.raises(ValueError, match="leaves nothing after the"):
        allocator_fraction(0.01, total_bytes=8 * GIB, context_bytes=GIB)
