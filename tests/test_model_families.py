"""The native transformers path on more than one family: tiny random Qwen2.5-VL and Qwen3-VL checkpoints,
chosen by ``model_type``, loaded through the chain, answering a video question."""

import numpy as np
import pytest

from memory.budget import MemoryBudget
from memory.strategy import parse_chain
from models.adapters.choice import adapter_factory, choose_adapter
from models.adapters.loading import load_adapter
from models.adapters.tiny_families import FAMILIES, build_tiny_family
from models.requests import ChatMessage, GenerationRequest, TextPart, VideoPart

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, tmp_path_factory):
    return request.param, build_tiny_family(tmp_path_factory.mktemp(request.param), request.param)


def _video_request() -> GenerationRequest:
    frames = np.random.default_rng(0).integers(0, 256, size=(4, 64, 64, 3), dtype=np.uint8)
    video = VideoPart(frames=frames, timestamps_s=(0.5, 1.5, 2.5, 3.5))
    return GenerationRequest(messages=(ChatMessage("user", (video, TextPart("What moves?"))),), max_new_tokens=3)


def _unlimited_budget(strategy) -> MemoryBudget:
    return MemoryBudget(
        device="cpu", weights_bytes=2**40, limit_bytes=2**40, available_bytes=2**40, context_bytes=0, reserve_bytes=0
    )


@pytest.mark.parametrize("precision", ["fp32", "nf4"])
def test_each_family_is_chosen_by_model_type_loads_through_the_chain_and_answers_a_video(family_model, precision):
    family, path = family_model
    adapter_name = choose_adapter(path, "auto", trust_remote_code=False)

    loaded = load_adapter(
        str(path), parse_chain([precision], "cpu"), measure_budget=_unlimited_budget, make_adapter=adapter_factory(adapter_name)
    )
    result = loaded.model.generate(_video_request())

    assert adapter_name == "transformers"
    assert loaded.model.describe()["model_type"] == family
    assert loaded.report.attempts[-1].outcome == "loaded"
    assert result.completion_tokens == 3
    assert result.prompt_tokens > 20  # the video's tokens are in the prompt


def test_qwen3_vl_prompts_carry_the_sampled_frames_real_times(tmp_path):
    path = build_tiny_family(tmp_path / "qwen3", "qwen3_vl")
    adapter = adapter_factory("transformers")(str(path), parse_chain(["fp32"], "cpu")[0])
    adapter.load()

    inputs, _ = adapter._prepare(_video_request())

    prompt = adapter._processor.decode(inputs["input_ids"][0])
    # Two frames per temporal patch: (0.5 + 1.5) / 2 and (2.5 + 3.5) / 2.
    assert "<1.0 seconds>" in prompt and "<3.0 seconds>" in prompt


def test_each_family_batches_mixed_media_as_if_each_request_ran_alone(family_model):
    """The batch engine's positions (interleaved M-RoPE, DeepStack features) match plain ``generate``."""
    from mixed_requests import mixed_requests
    from test_batch_engine import decode_in_batch

    _, path = family_model
    loaded = load_adapter(str(path), parse_chain(["fp32"], "cpu"), measure_budget=_unlimited_budget,
                          make_adapter=adapter_factory("transformers"))
    adapter = loaded.model
    requests = mixed_requests(new_tokens=8)
    alone = []
    for request in requests:
        inputs, prompt_tokens = adapter._prepare(request)
        output = adapter.model.generate(**inputs, **adapter._generation_kwargs(request))
        alone.append(output[0, prompt_tokens:].tolist())

    assert decode_in_batch(adapter.batch_engine(), requests, {0: [0, 1], 2: [2, 3]}) == alone
