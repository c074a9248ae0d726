"""A mid-size random-weight Qwen2-VL for measuring: Qwen2-VL-2B's text widths, 4 layers, the tiny model's files.

Its memory and speed follow from its shapes, not its weights: 1536 wide, 12 heads with 2 KV heads
of 128, an MLP of 8960, 4 decoder layers (about 190M parameters), the built-in tiny model's
tokenizer, processor and small vision tower (its merger widened to 1536). Built once into the
given folder, in fp32 (what the CPU group's chain loads first).
"""

import pathlib

import torch
import transformers

from models.adapters import tiny

TEXT_WIDTHS = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 4,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    # head_dim 128: Qwen2-VL-2B's mrope sections (16, 24, 24) sum to 64 = head_dim / 2.
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}


# Qwen2-VL-2B's vision tower widths (embed 1280, 16 heads, MLP x4) with 4 of its 32 blocks: about 80M parameters, a
# tower whose work on 8 frames weighs as a real one's does beside the decoder's (bench.ask_many).
VISION_WIDTHS = {"embed_dim": 1280, "depth": 4, "num_heads": 16, "mlp_ratio": 4}
QWEN2_VL_PIXEL_BOUNDS = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}  # min_pixels, max_pixels


def mid_model_config(*, real_vision: bool = False) -> transformers.Qwen2VLConfig:
    """The mid-size model's config: the tiny model's, with Qwen2-VL-2B's text widths (and with ``real_vision``, its
    vision tower's widths too)."""
    tiny_folder = tiny.ensure_tiny_model()
    tiny_config = transformers.AutoConfig.from_pretrained(tiny_folder).to_dict()
    text_config = {**tiny_config["text_config"], **TEXT_WIDTHS, "max_position_embeddings": 32768}
    text_config.pop("layer_types", None)  # derived again for 4 layers
    text_config.pop("head_dim", None)
    vision_config = {**tiny_config["vision_config"], "hidden_size": TEXT_WIDTHS["hidden_size"]}  # the merger feeds the decoder
    if real_vision:
        vision_config.update(VISION_WIDTHS)
    token_ids = {key: tiny_config[key] for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    return transformers.Qwen2VLConfig(text_config=text_config, vision_config=vision_config, tie_word_embeddings=True, **token_ids)


def write_mid_model_files(folder: pathlib.Path, *, real_vision: bool = False) -> pathlib.Path:
    """The mid-size model's config, tokenizer and processor files, without weights: what planning reads."""
    folder.mkdir(parents=True, exist_ok=True)
    mid_model_config(real_vision=real_vision).save_pretrained(folder)
    processor = transformers.AutoProcessor.from_pretrained(tiny.ensure_tiny_model())
    if real_vision:  # Qwen2-VL-2B's processor bounds: the server's pixel budget decides a frame's size, as with it
        processor.image_processor.size = processor.video_processor.size = dict(QWEN2_VL_PIXEL_BOUNDS)
    processor.save_pretrained(folder)
    return folder


def ensure_mid_model(folder: pathlib.Path, *, real_vision: bool = False) -> pathlib.Path:
    if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
        return folder
    config = mid_model_config(real_vision=real_vision)
    write_mid_model_files(folder, real_vision=real_vision)
    torch.manual_seed(0)
    model = transformers.Qwen2VLForConditionalGeneration(config).to(torch.float32).eval()
    model.save_pretrained(folder)
    return folder


def parameter_count(folder: pathlib.Path) -> int:
    with torch.device("meta"):
        model = transformers.Qwen2VLForConditionalGeneration(transformers.AutoConfig.from_pretrained(folder))
    return sum(parameter.numel() for parameter in model.parameters())
