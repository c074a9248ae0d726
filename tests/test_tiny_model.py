import concurrent.futures
import json
import multiprocessing
import pathlib

import pytest
import transformers

from models.adapters import tiny

pytestmark = pytest.mark.component


def test_two_builds_are_byte_identical(tmp_path):
    tiny.build_tiny_model(tmp_path / "first")
    tiny.build_tiny_model(tmp_path / "second")

    first_hash = tiny.directory_sha256(tmp_path / "first")
    assert first_hash == tiny.directory_sha256(tmp_path / "second")
    assert len(first_hash) == 64


def test_the_build_is_a_few_hundred_kilobytes(tmp_path):
    tiny.build_tiny_model(tmp_path)

    total_bytes = sum(path.stat().st_size for path in tmp_path.rglob("*") if path.is_file())
    assert 100_000 < total_bytes < 1_000_000
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "chat_template.jinja"} <= {
        path.name for path in tmp_path.iterdir()
    }


def test_config_token_ids_match_the_tokenizer(tiny_model_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_path)
    config = json.loads((tiny_model_path / "config.json").read_text())

    assert config["model_type"] == "qwen2_vl"
    assert config["image_token_id"] == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config["video_token_id"] == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert config["vision_start_token_id"] == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config["text_config"]["vocab_size"] == len(tokenizer)
    # Special tokens are single tokens, not split by the byte-level BPE.
    encoded = tokenizer("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)["input_ids"]
    assert encoded[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert encoded[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_the_tokenizer_round_trips_text(tiny_model_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_path)
    text = "What happens in this video? Ünïcode and 42 digits."

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]

    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode())  # trained merges, not one token per byte


def test_ensure_builds_once_then_reuses(tmp_path):
    built = tiny.ensure_tiny_model(tmp_path)
    mtime = (built / "model.safetensors").stat().st_mtime_ns

    again = tiny.ensure_tiny_model(tmp_path)

    assert again == built
    assert (again / "model.safetensors").stat().st_mtime_ns == mtime


def test_concurrent_builds_leave_one_complete_model_and_no_staging(tmp_path):
    # Separate processes, as two replicas starting at once on one node would be.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        paths = list(pool.map(tiny.ensure_tiny_model, [tmp_path] * 2))
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        paths += list(pool.map(lambda _: tiny.ensure_tiny_model(tmp_path), range(2)))

    assert len(set(paths)) == 1
    reference = tmp_path / "reference"
    tiny.build_tiny_model(reference)
    assert tiny.directory_sha256(paths[0]) == tiny.directory_sha256(reference)
    leftovers = [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]
    assert leftovers == []


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(tiny.CACHE_DIR_ENV, str(tmp_path))

    assert tiny.tiny_model_dir().parent == pathlib.Path(tmp_path)
