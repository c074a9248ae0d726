"""Estimates from config alone against the bytes a real load holds, at every precision.

Real transformers and bitsandbytes loads on CPU: the tiny model and a 76M
random-weight model with SmolVLM-256M's real widths and vocabulary.
"""

import json

import pytest
import transformers

from memory.estimate import (
    ModelConfigError,
    build_meta_model,
    estimate_weights,
    load_model_config,
    measure_model_bytes,
)
from memory.strategy import parse_strategy
from models.adapters.reference_configs import build_random_model

pytestmark = pytest.mark.unit

TARGET_ERROR = 0.05


@pytest.fixture(scope="module")
def reduced_smolvlm_path(tmp_path_factory):
    return build_random_model("smolvlm-256m-reduced", tmp_path_factory.mktemp("smolvlm-reduced"))


@pytest.mark.parametrize("strategy_name", ["fp32", "bf16", "int8", "nf4"])
@pytest.mark.parametrize("model", ["tiny", "smolvlm-256m-reduced"])
def test_estimate_is_within_five_percent_of_the_loaded_bytes(model, strategy_name, tiny_model_path, request):
    path = tiny_model_path if model == "tiny" else request.getfixturevalue("reduced_smolvlm_path")
    strategy = parse_strategy(strategy_name, "cpu")
    estimate = estimate_weights(build_meta_model(load_model_config(path), strategy.torch_dtype), strategy.torch_dtype, strategy.quantization)

    loaded = transformers.AutoModelForImageTextToText.from_pretrained(path, **strategy.from_pretrained_kwargs())
    measured = measure_model_bytes(loaded)

    assert abs(estimate.total_bytes - measured) / measured <= TARGET_ERROR, (estimate.total_bytes, measured)


def test_quantization_leaves_embeddings_and_lm_head_alone_but_quantizes_the_vision_tower(reduced_smolvlm_path):
    config = load_model_config(reduced_smolvlm_path)
    meta = build_meta_model(config, strategy_dtype := parse_strategy("int8", "cpu").torch_dtype)
    vocab, hidden = config.text_config.vocab_size, config.text_config.hidden_size

    estimate = estimate_weights(meta, strategy_dtype, "int8")

    # Input embeddings and the untied lm_head stay unquantized.
    assert estimate.unquantized_parameters >= 2 * vocab * hidden
    vision_linear = sum(
        module.weight.numel() for name, module in meta.named_modules()
        if "vision" in name and type(module).__name__ == "Linear"
    )
    assert vision_linear > 0
    assert estimate.quantized_parameters >= vision_linear
    # One fp32 scale per output row of every quantized layer.
    assert estimate.quantization_state_bytes > 0


def test_nf4_prices_the_absmax_scales_that_get_memory_footprint_misses(reduced_smolvlm_path):
    strategy = parse_strategy("nf4", "cpu")
    loaded = transformers.AutoModelForImageTextToText.from_pretrained(reduced_smolvlm_path, **strategy.from_pretrained_kwargs())

    assert measure_model_bytes(loaded) > loaded.get_memory_footprint()


def test_precisions_order_by_size(reduced_smolvlm_path):
    config = load_model_config(reduced_smolvlm_path)
    sizes = []
    for name in ["fp32", "bf16", "int8", "nf4"]:
        strategy = parse_strategy(name, "cpu")
        sizes.append(estimate_weights(build_meta_model(config, strategy.torch_dtype), strategy.torch_dtype, strategy.quantization).total_bytes)

    assert sizes == sorted(sizes, reverse=True)
    # fp32 is twice bf16 but for the buffers (rotary frequencies), which stay fp32 in both.
    assert sizes[0] == pytest.approx(2 * sizes[1], rel=1e-4)
    assert sizes[0] != 2 * sizes[1]


class TestConfigErrors:
    def test_a_missing_path_names_it_and_the_fix(self, tmp_path):
        with pytest.raises(ModelConfigError, match="does not exist; point model.source"):
            load_model_config(tmp_path / "absent")

    def test_a_folder_without_config_json(self, tmp_path):
        with pytest.raises(ModelConfigError, match="has no config.json"):
            load_model_config(tmp_path)

    def test_a_config_that_is_not_json(self, tmp_path):
        (tmp_path / "config.json").write_text("{not json")

        with pytest.raises(ModelConfigError, match="not valid JSON"):
            load_model_config(tmp_path)

    def test_a_json_that_is_not_a_model_config(self, tmp_path):
        (tmp_path / "config.json").write_text(json.dumps({"learning_rate": 0.1}))

        with pytest.raises(ModelConfigError, match="not a model config"):
            load_model_config(tmp_path)

    def test_an_unknown_model_type(self, tmp_path):
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))

        with pytest.raises(ModelConfigError, match="cannot read the config"):
            load_model_config(tmp_path)


