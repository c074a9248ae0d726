"""The built-in tiny vision-language model: a random-weight Qwen2-VL built offline.

It exists so that everything from HTTP to ``generate`` runs for real on a
machine that can download nothing. It is small (about 700 KB, bf16), built in
seconds, and deterministic: the same files with the same bytes every time. Its
answers mean nothing; the loading and generation code it runs is exactly the
code a real Qwen2-VL / Qwen2.5-VL checkpoint runs.

The build happens in a temporary folder beside the target and is renamed into
place, so two replicas starting at once never see half a model.
"""

import hashlib
import logging
import os
import pathlib
import shutil
import tempfile
import threading

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from models.cache_dir import CACHE_DIR_ENV, default_cache_dir  # noqa: F401 - CACHE_DIR_ENV: where tests set it

logger = logging.getLogger(__name__)

# Bump when anything below changes what is written; old builds are left alone.
TINY_MODEL_VERSION = "4"
TINY_MODEL_NAME = "tiny-qwen2-vl"

_SEED = 20261127
_VOCAB_SIZE_BEFORE_SPECIALS = 384
_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# A fixed training text: the tokenizer's merges come from it, so it must never
# depend on anything outside this file.
_TRAINING_TEXT = (
    "What happens in this video? A person walks a dog along the river. "
    "Describe the image. There is a red car parked in front of a white house. "
    "How many people are in the frame? Two people are talking at a table. "
    "The camera pans left, then the scene cuts to a kitchen where someone is cooking. "
    "Summarise the clip in one sentence. Is anything unusual happening? No, nothing unusual. "
    "The quick brown fox jumps over the lazy dog. 0123456789 ,.;:!?'\"()[]{}<>-_/\\ "
)

# Qwen2-VL's chat template: text, image and video parts, with vision placeholders
# that the processor expands to one token per merged patch.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# One merged 28 x 28 patch becomes one visual token. The tiny model keeps
# images and frames small so that CPU tests stay fast.
TINY_IMAGE_MAX_PIXELS = 64 * 28 * 28
TINY_IMAGE_MIN_PIXELS = 4 * 28 * 28


def tiny_model_dir(cache_dir: pathlib.Path | None = None) -> pathlib.Path:
    """Where the tiny model lives (built or not)."""
    root = cache_dir if cache_dir is not None else default_cache_dir()
    return root / f"{TINY_MODEL_NAME}-v{TINY_MODEL_VERSION}-transformers{transformers.__version__}"


def ensure_tiny_model(cache_dir: pathlib.Path | None = None) -> pathlib.Path:
    """Return the tiny model's folder, building it first if it is not there."""
    target = tiny_model_dir(cache_dir)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build_tiny_model(staging)
        # mkdtemp makes the folder private; replicas running as other users must read it.
        staging.chmod(0o755)
        for path in staging.iterdir():
            path.chmod(0o644)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process renamed its build into place first: same bytes, keep theirs.
            if not (target / "config.json").is_file():
                raise
            logger.info("Tiny model at %s was built concurrently; using that build", target)
        else:
            logger.info("Built tiny model at %s (sha256 %s)", target, directory_sha256(target))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tiny_model(output_dir: pathlib.Path) -> None:
    """Write the tiny model (weights, config, tokenizer, processor) into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    transformers.utils.logging.disable_progress_bar()
    tokenizer = _build_tokenizer()
    processor = transformers.Qwen2VLProcessor(
        image_processor=transformers.Qwen2VLImageProcessor(
            min_pixels=TINY_IMAGE_MIN_PIXELS, max_pixels=TINY_IMAGE_MAX_PIXELS
        ),
        video_processor=transformers.Qwen2VLVideoProcessor(
            min_pixels=TINY_IMAGE_MIN_PIXELS,
            max_pixels=TINY_IMAGE_MAX_PIXELS,
            do_sample_frames=False,
            cap_pixels_per_frame=True,
        ),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    config = _build_config(tokenizer)
    with _seeded_cpu_rng(_SEED):
        model = transformers.Qwen2VLForConditionalGeneration(config)
    # Stored in bf16, as real Qwen2-VL checkpoints are; loaders pick their own dtype.
    model.to(torch.bfloat16).eval()
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)


def directory_sha256(folder: pathlib.Path) -> str:
    """One hash over every file's relative path and bytes, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _build_tokenizer() -> transformers.PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE_BEFORE_SPECIALS,
        special_tokens=list(_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([_TRAINING_TEXT], trainer=trainer)
    return transformers.Qwen2TokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=list(_SPECIAL_TOKENS[1:]),
        model_max_length=32768,
    )


def _build_config(tokenizer: transformers.PreTrainedTokenizerFast) -> transformers.Qwen2VLConfig:
    token_id = tokenizer.convert_tokens_to_ids
    hidden_size = 64
    # Two heads of 32 and one KV head: vLLM's CPU attention takes head sizes from 32 up, and the
    # K and V projections stay 64 -> 32 wide, so the parameter count is what it was with 4 heads of 16.
    num_attention_heads = 2
    # mrope splits head_dim / 2 rotary frequencies into (temporal, height, width).
    head_dim = hidden_size // num_attention_heads
    mrope_section = [4, 6, 6]
    if sum(mrope_section) != head_dim // 2:
        raise ValueError(f"mrope_section {mrope_section} must sum to head_dim / 2 = {head_dim // 2}")
    return transformers.Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": num_attention_heads,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
            "bos_token_id": token_id("<|endoftext|>"),
            "eos_token_id": token_id("<|im_end|>"),
            "pad_token_id": token_id("<|endoftext|>"),
            "tie_word_embeddings": True,
        },
        # Every Linear's in_features is a multiple of 64: bitsandbytes' nf4 CPU kernels
        # repack weights in blocks of 64 and fail on narrower layers.
        vision_config={
            "depth": 2,
            "embed_dim": 64,
            "hidden_size": hidden_size,
            "num_heads": 4,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=True,
    )


# Weight init draws from torch's global generator: two builds in one process must not interleave.
_GLOBAL_RNG_LOCK = threading.Lock()


class _seeded_cpu_rng:
    """Seed torch's CPU generator for a block (one block per process at a time), then restore it."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._saved_state: torch.Tensor | None = None

    def __enter__(self) -> None:
        _GLOBAL_RNG_LOCK.acquire()
        self._saved_state = torch.random.get_rng_state()
        torch.manual_seed(self._seed)

    def __exit__(self, *exc_info: object) -> None:
        torch.random.set_rng_state(self._saved_state)
        _GLOBAL_RNG_LOCK.release()


if __name__ == "__main__":
    # `python -m models.adapters.tiny` builds the tiny model if needed and prints its folder.
    import sys

    sys.stdout.write(f"{ensure_tiny_model()}\n")
