"""Random-weight models built from real architectures' configs, for memory behaviour at real sizes.

No checkpoint can be downloaded here, but a model's memory depends only on its
config: a random-weight model built from a real config loads, quantizes and
occupies memory exactly like the real one. The configs below carry the widths
of published checkpoints (their ``config.json`` values); ``-reduced`` variants
keep the real widths and vocabulary with fewer layers, for tests on two cores.
"""

import logging
import pathlib
from typing import Any

import torch
import transformers

logger = logging.getLogger(__name__)

_SMOLVLM_VISION = {
    "model_type": "idefics3_vision",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "patch_size": 16,
    "image_size": 512,
}
_SMOLVLM_256M_TEXT = {
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49280,
    "max_position_embeddings": 8192,
    "rope_theta": 100000,
    "tie_word_embeddings": False,
}
_SMOLVLM_500M_TEXT = {
    **_SMOLVLM_256M_TEXT,
    "hidden_size": 960,
    "intermediate_size": 2560,
    "num_hidden_layers": 32,
    "num_attention_heads": 15,
    "num_key_value_heads": 5,
}
_QWEN2_VL_7B = {
    "model_type": "qwen2_vl",
    "text_config": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "depth": 32,
        "embed_dim": 1280,
        "hidden_size": 3584,
        "num_heads": 16,
        "mlp_ratio": 4,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
}
_QWEN2_5_VL_7B = {
    "model_type": "qwen2_5_vl",
    "text_config": {**_QWEN2_VL_7B["text_config"], "max_position_embeddings": 128000},
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "hidden_act": "silu",
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
    },
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
}

# name -> (config dict, about how many parameters)
REFERENCE_CONFIGS: dict[str, dict[str, Any]] = {
    # HuggingFaceTB/SmolVLM-256M-Instruct's widths and vocabulary, 1 of 30 text and 1 of 12 vision layers: 66M.
    "smolvlm-256m-reduced": {
        "model_type": "idefics3",
        "scale_factor": 4,
        "image_token_id": 49190,
        "text_config": {**_SMOLVLM_256M_TEXT, "num_hidden_layers": 1},
        "vision_config": {**_SMOLVLM_VISION, "num_hidden_layers": 1},
    },
    "smolvlm-256m": {
        "model_type": "idefics3",
        "scale_factor": 4,
        "image_token_id": 49190,
        "text_config": _SMOLVLM_256M_TEXT,
        "vision_config": _SMOLVLM_VISION,
    },
    # HuggingFaceTB/SmolVLM-500M-Instruct: about 500M.
    "smolvlm-500m": {
        "model_type": "idefics3",
        "scale_factor": 4,
        "image_token_id": 49190,
        "text_config": _SMOLVLM_500M_TEXT,
        "vision_config": _SMOLVLM_VISION,
    },
    # Qwen/Qwen2-VL-7B-Instruct: about 8.3B; for plans and GPU runs.
    "qwen2-vl-7b": _QWEN2_VL_7B,
    # Qwen/Qwen2.5-VL-7B-Instruct's config.json (widths, depths, vocabulary): about 8.3B; for plans.
    "qwen2.5-vl-7b": _QWEN2_5_VL_7B,
}


def reference_config(name: str) -> transformers.PretrainedConfig:
    if name not in REFERENCE_CONFIGS:
        raise KeyError(f"Unknown reference config {name!r}; known: {sorted(REFERENCE_CONFIGS)}")
    raw = dict(REFERENCE_CONFIGS[name])
    model_type = raw.pop("model_type")
    return transformers.AutoConfig.for_model(model_type, **raw)


def write_config_only(name: str, folder: pathlib.Path) -> pathlib.Path:
    """Just ``config.json``: enough for estimates and plans, nothing loadable."""
    folder.mkdir(parents=True, exist_ok=True)
    reference_config(name).save_pretrained(folder)
    return folder


def build_random_model(name: str, folder: pathlib.Path, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> pathlib.Path:
    """Save a random-weight model of this architecture to ``folder`` (config and safetensors)."""
    config = reference_config(name)
    torch.manual_seed(seed)
    model = transformers.AutoModelForImageTextToText.from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    logger.info("Built random-weight %s (%d parameters) at %s", name, sum(p.numel() for p in model.parameters()), folder)
    return folder
