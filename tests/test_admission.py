"""Request cost prediction and admission: pure arithmetic, and the prediction against a real model's KV cache."""

import pytest
import torch
import transformers
from mixed_requests import mixed_requests

from memory.admission import RequestCostModel, admission_decision, batch_bytes
from memory.gpu import allocator_fraction
from models.requests import ChatMessage, GenerationRequest, TextPart

pytestmark = pytest.mark.unit

GIB = 1024**3


def test_the_cost_model_prices_kv_cache_vision_and_logits_from_the_config(tiny_model_path):
    config = transformers.AutoConfig.from_pretrained(tiny_model_path)
    costs = RequestCostModel.from_config(config, dtype_bytes=4)
    text = config.text_config

    # 2 (K, V) x 2 layers x 1 kv head x 32 head dim x 4 bytes
    assert costs.kv_bytes_per_token == 2 * text.num_hidden_layers * 1 * 32 * 4 == 512
    assert costs.vision_bytes_per_patch == config.vision_config.embed_dim * 4 * 8
    cost = costs.predict(prompt_tokens=100, max_new_tokens=28, visual_patches=64)
    assert cost.kv_cache_bytes == 128 * 512
    assert cost.vision_bytes == 64 * costs.vision_bytes_per_patch
    # The widest decoder layer over 100 prompt tokens, the scores of 2 heads (and the mask), the logits.
    assert cost.prefill_bytes == 100 * (4 * text.intermediate_size + 4 * text.hidden_size) * 4 + 100 * 100 * 3 * 4 + costs.logits_bytes_per_row
    assert cost.total_bytes == cost.kv_cache_bytes + cost.vision_bytes + cost.prefill_bytes


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
    ("alone", "batch_with", "running", "expected"),
    [
        (2 * GIB, 2 * GIB, 0, "admit"),
        (2 * GIB, int(6.5 * GIB), 2, "wait"),  # the batch would outgrow 6 GiB with it
        (2 * GIB, int(5.5 * GIB), 2, "admit"),
        (1 * GIB, 3 * GIB, 8, "wait"),  # the batch is full
        (7 * GIB, 7 * GIB, 0, "never_fits"),
        (2 * GIB, 7 * GIB, 0, "admit"),  # an empty batch: others' queued inputs are no reason to wait
    ],
)
def test_admission_against_headroom(alone, batch_with, running, expected):
    decision = admission_decision(
        alone_bytes=alone, batch_bytes_with=batch_with, headroom_bytes=6 * GIB, running=running, max_batch_size=8
    )

    assert decision == expected


def test_a_batch_is_priced_padded_to_its_longest_row():
    costs = RequestCostModel(kv_bytes_per_token=28 * 1024, vision_bytes_per_patch=0, logits_bytes_per_row=0)

    # One 4672-token video row and seven 96-token text rows: 8 rows of 4672 tokens, not 4672 + 7 x 96.
    assert batch_bytes(costs, row_tokens=[4672] + [96] * 7) == 8 * 4672 * 28 * 1024
    assert batch_bytes(costs, row_tokens=[]) == 0


def test_on_cuda_attention_scores_are_not_priced_only_the_mask(tiny_model_path):
    config = transformers.AutoConfig.from_pretrained(tiny_model_path)

    cpu = RequestCostModel.from_config(config, dtype_bytes=2, device="cpu")
    cuda = RequestCostModel.from_config(config, dtype_bytes=2, device="cuda")

    assert cpu.attention_bytes_per_token_pair == (2 + 1) * 4  # 2 heads of fp32 scores, and the mask
    assert cuda.attention_bytes_per_token_pair == 4
    assert cuda.kv_bytes_per_token == cpu.kv_bytes_per_token


def test_a_batch_joining_now_adds_its_prefill_padded_to_its_longest_prompt():
    costs = RequestCostModel(kv_bytes_per_token=0, vision_bytes_per_patch=0, logits_bytes_per_row=10,
                             prefill_bytes_per_token=100, attention_bytes_per_token_pair=1)

    assert batch_bytes(costs, row_tokens=[], prefill_prompts=[30, 50], vision_bytes=7) == 2 * (50 * 100 + 50 * 50 + 10) + 7


def test_the_kv_cache_a_real_batch_holds_is_what_the_batch_price_says(tiny_adapter):
    engine = tiny_adapter.batch_engine()
    costs = RequestCostModel.from_config(tiny_adapter.model.config, dtype_bytes=engine.kv_dtype_bytes)
    short = GenerationRequest(messages=(ChatMessage("user", (TextPart("Hi"),)),), max_new_tokens=3)
    long = GenerationRequest(messages=(ChatMessage("user", (TextPart("Describe the whole river scene " * 6),)),),
                             max_new_tokens=3)
    prompts = [engine.prepare(short), engine.prepare(long)]
    batch, _ = engine.prefill_many(prompts)
    for _ in range(3):
        engine.decode(batch)
        batch.advance(torch.zeros(2, dtype=torch.long))

    longest = max(prompt.prompt_tokens for prompt in prompts) + 3
    assert batch.kv_bytes() == batch_bytes(costs, row_tokens=[longest, longest])
    assert batch.kv_bytes() > sum(costs.predict(prompt_tokens=p.prompt_tokens, max_new_tokens=3, visual_patches=0).kv_cache_bytes
                                  for p in prompts)


def test_the_allocator_cap_keeps_the_cuda_context_inside_the_share():
    fraction = allocator_fraction(0.5, total_bytes=80 * GIB, context_bytes=GIB // 2)

    assert fraction == pytest.approx((40 - 0.5) / 80)
    # Two such replicas plus their contexts fit the device.
    assert 2 * (fraction * 80 * GIB + GIB // 2) <= 80 * GIB
    with pytest.raises(ValueError, match="leaves nothing after the"):
        allocator_fraction(0.01, total_bytes=8 * GIB, context_bytes=GIB)


def test_a_requests_inputs_are_priced_exactly_its_frames_only_where_they_share_the_compute_memory(tiny_adapter):
    engine = tiny_adapter.batch_engine()
    video_request = mixed_requests(new_tokens=2)[2]
    frames = video_request.messages[0].content[0].frames
    prepared = engine.prepare(video_request)
    config = tiny_adapter.model.config
    cpu = RequestCostModel.from_config(config, dtype_bytes=4, device="cpu")
    cuda = RequestCostModel.from_config(config, dtype_bytes=4, device="cuda")

    def cost(costs: RequestCostModel):
        return costs.predict(prompt_tokens=prepared.prompt_tokens, max_new_tokens=2, visual_patches=prepared.visual_patches,
                             input_bytes=prepared.input_bytes, media_bytes=prepared.media_bytes)

    tensors = sum(value.nbytes for value in prepared.inputs.values() if isinstance(value, torch.Tensor))
    assert prepared.media_bytes == frames.nbytes == 4 * 64 * 96 * 3
    assert prepared.input_bytes == tensors > prepared.inputs["pixel_values_videos"].nbytes > 0
    assert cost(cpu).input_bytes == tensors + frames.nbytes  # queued in the batch's RAM
    assert cost(cuda).input_bytes == tensors  # host memory until its prefill copies the tensors
    assert prepared.without_inputs().input_bytes == 0 and prepared.without_inputs().media_bytes == frames.nbytes


def test_inputs_held_beside_a_batch_add_to_its_price():
    costs = RequestCostModel(kv_bytes_per_token=10, vision_bytes_per_patch=0, logits_bytes_per_row=0)

    assert batch_bytes(costs, row_tokens=[5, 5], input_bytes=1000) == 2 * 5 * 10 + 1000
