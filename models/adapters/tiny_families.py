"""Tiny random-weight checkpoints of other native families, built offline like the built-in tiny model.

They prove the native transformers path (adapter choice by ``model_type``, the loading chain, video
through the chat template) on more than one family without a download: Qwen2.5-VL (window attention
in the vision tower) and Qwen3-VL (DeepStack vision features, interleaved M-RoPE, and frame
timestamps written into the prompt). Same tokenizer and chat template as the built-in model; every
Linear at least 64 wide, as bitsandbytes' CPU kernels need.
"""

import pathlib

import torch
import transformers

from models.adapters import tiny

FAMILIES = ("qwen2_5_vl", "qwen3_vl")

# The vision tower both families share in shape; each adds its patch size and its own features.
_VISION_TOWER = {
    "depth": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_heads": 4,
    "out_hidden_size": 64,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}


def build_tiny_family(output_dir: pathlib.Path, family: str) -> pathlib.Path:
    """Write a tiny ``family`` checkpoint (weights, config, tokenizer, processor) into ``output_dir``."""
    if family not in FAMILIES:
        raise ValueError(f"No tiny build for {family!r}; families: {', '.join(FAMILIES)}")
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny._build_tokenizer()
    text_config = _text_config(tokenizer)
    token_ids = _vision_token_ids(tokenizer)
    if family == "qwen2_5_vl":
        processor = transformers.Qwen2_5_VLProcessor(
            image_processor=transformers.Qwen2VLImageProcessor(
                min_pixels=tiny.TINY_IMAGE_MIN_PIXELS, max_pixels=tiny.TINY_IMAGE_MAX_PIXELS
            ),
            video_processor=transformers.Qwen2VLVideoProcessor(
                min_pixels=tiny.TINY_IMAGE_MIN_PIXELS,
                max_pixels=tiny.TINY_IMAGE_MAX_PIXELS,
                do_sample_frames=False,
                cap_pixels_per_frame=True,
            ),
            tokenizer=tokenizer,
            chat_template=tiny.CHAT_TEMPLATE,
        )
        config = transformers.Qwen2_5_VLConfig(
            text_config=text_config,
            vision_config={**_VISION_TOWER, "patch_size": 14, "window_size": 56, "fullatt_block_indexes": [1]},
            tie_word_embeddings=True,
            **token_ids,
        )
        model_class = transformers.Qwen2_5_VLForConditionalGeneration
    else:
        # Qwen3-VL patches are 16 pixels: one merged 32 x 32 patch is one visual token.
        pixels = {"shortest_edge": 4 * 32 * 32, "longest_edge": 64 * 32 * 32}
        processor = transformers.Qwen3VLProcessor(
            image_processor=transformers.Qwen2VLImageProcessor(size=pixels, patch_size=16),
            video_processor=transformers.Qwen3VLVideoProcessor(
                size=pixels, patch_size=16, do_sample_frames=False, cap_pixels_per_frame=True
            ),
            tokenizer=tokenizer,
            chat_template=tiny.CHAT_TEMPLATE,
        )
        # Four heads of 16 (two KV heads): every projection stays a multiple of 32 wide, as nf4's CPU kernels need.
        text_config = {
            **text_config,
            "head_dim": 16,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rope_parameters": {**text_config["rope_parameters"], "mrope_section": [2, 3, 3], "mrope_interleaved": True},
        }
        config = transformers.Qwen3VLConfig(
            text_config=text_config,
            vision_config={
                **_VISION_TOWER, "patch_size": 16, "num_position_embeddings": 256, "deepstack_visual_indexes": [1]
            },
            tie_word_embeddings=True,
            **token_ids,
        )
        model_class = transformers.Qwen3VLForConditionalGeneration
    with tiny._seeded_cpu_rng(tiny._SEED):
        model = model_class(config)
    model.to(torch.bfloat16).eval()
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir


def _text_config(tokenizer) -> dict:
    qwen2_vl = tiny._build_config(tokenizer).text_config.to_dict()
    keys = (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "max_position_embeddings", "rope_parameters", "bos_token_id", "eos_token_id",
        "pad_token_id", "tie_word_embeddings",
    )
    return {key: qwen2_vl[key] for key in keys}


def _vision_token_ids(tokenizer) -> dict[str, int]:
    token_id = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": token_id("<|image_pad|>"),
        "video_token_id": token_id("<|video_pad|>"),
        "vision_start_token_id": token_id("<|vision_start|>"),
        "vision_end_token_id": token_id("<|vision_end|>"),
    }
