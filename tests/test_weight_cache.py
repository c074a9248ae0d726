"""The weight cache with real transformers and bitsandbytes on the tiny model: store, reuse, reject, bound, race."""

import concurrent.futures
import json
import shutil

import pytest
import torch

from memory.strategy import parse_strategy
from models.adapters.hf_adapter import HuggingFaceVisionLanguageAdapter
from models.weight_cache import MANIFEST, WeightCache

pytestmark = pytest.mark.unit


@pytest.fixture
def cache(tmp_path):
    return WeightCache(tmp_path / "weights", max_bytes=1 << 30)


def _load(model_path, name, cache):
    adapter = HuggingFaceVisionLanguageAdapter(str(model_path), strategy=parse_strategy(name, "cpu"), weight_cache=cache)
    adapter.load()
    return adapter


def _state(adapter) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in adapter.model.state_dict().items()}


@pytest.mark.parametrize("precision", ["int8", "nf4"])
def test_the_second_quantized_load_reads_the_cache_and_holds_the_same_weights(tiny_model_path, cache, precision):
    first = _load(tiny_model_path, precision, cache)
    assert first.describe()["weights_from"] == "checkpoint"
    assert len(cache.entries()) == 1

    second = _load(tiny_model_path, precision, cache)

    assert second.describe()["weights_from"].startswith("weight cache")
    expected, got = _state(first), _state(second)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert type(second.model.model.language_model.layers[0].mlp.down_proj) is type(first.model.model.language_model.layers[0].mlp.down_proj)


def test_an_unquantized_load_is_not_cached(tiny_model_path, cache):
    adapter = _load(tiny_model_path, "bf16", cache)
    assert adapter.describe()["weights_from"] == "checkpoint"
    assert cache.entries() == []


def test_a_corrupt_entry_is_detected_removed_and_rebuilt_never_loaded(tiny_model_path, cache):
    _load(tiny_model_path, "int8", cache)
    (folder, _, _), = cache.entries()
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # one bit pattern in a weight, same size
    weights.write_bytes(bytes(data))

    rebuilt = _load(tiny_model_path, "int8", cache)

    assert rebuilt.describe()["weights_from"] == "checkpoint"
    (entry, _, _), = cache.entries()
    assert entry == folder and (entry / "model.safetensors").read_bytes() != bytes(data)  # written again, whole
    assert _load(tiny_model_path, "int8", cache).describe()["weights_from"].startswith("weight cache")


def test_an_entry_for_other_library_versions_is_not_used(tiny_model_path, cache):
    _load(tiny_model_path, "nf4", cache)
    (folder, _, _), = cache.entries()
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["key"]["versions"]["bitsandbytes"] = "0.0.1"
    (folder / MANIFEST).write_text(json.dumps(manifest))

    assert _load(tiny_model_path, "nf4", cache).describe()["weights_from"] == "checkpoint"


def test_the_key_follows_the_checkpoints_content_strategy_and_versions(tiny_model_path, cache, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_path, copy)
    int8, nf4 = parse_strategy("int8", "cpu"), parse_strategy("nf4", "cpu")
    assert cache.key(str(copy), int8) == cache.key(str(tiny_model_path), int8)  # same bytes, another folder
    assert cache.entry_name(cache.key(str(copy), int8)) != cache.entry_name(cache.key(str(copy), nf4))
    config = json.loads((copy / "config.json").read_text())
    config["vd_note"] = "changed"
    (copy / "config.json").write_text(json.dumps(config))
    assert cache.key(str(copy), int8)["checkpoint_sha256"] != cache.key(str(tiny_model_path), int8)["checkpoint_sha256"]
    assert set(cache.key(str(copy), int8)["versions"]) == {"transformers", "bitsandbytes", "torch"}


def test_the_cache_keeps_within_its_bound_dropping_the_least_recently_used(tiny_model_path, tmp_path):
    sizes = {}
    for precision in ("int8", "nf4"):
        probe = WeightCache(tmp_path / f"probe-{precision}", max_bytes=1 << 30)
        _load(tiny_model_path, precision, probe)
        sizes[precision] = probe.entries()[0][1]
    bounded = WeightCache(tmp_path / "bounded", max_bytes=max(sizes.values()) + min(sizes.values()) // 2)

    _load(tiny_model_path, "int8", bounded)
    _load(tiny_model_path, "nf4", bounded)

    (kept, size, _), = bounded.entries()  # both do not fit: the older (int8) went
    assert size == sizes["nf4"]
    tiny = WeightCache(tmp_path / "tiny", max_bytes=1000)
    _load(tiny_model_path, "int8", tiny)
    assert tiny.entries() == []  # larger than the whole bound: not kept


def test_two_writers_of_one_entry_both_succeed_and_leave_one_whole_entry(tiny_model_path, cache):
    adapter = _load(tiny_model_path, "int8", WeightCache(cache.root.parent / "elsewhere", max_bytes=1 << 30))
    key = cache.key(str(tiny_model_path), parse_strategy("int8", "cpu"))

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        folders = list(pool.map(lambda _: cache.store(key, adapter.model), range(2)))

    assert folders[0] == folders[1] == cache.entries()[0][0]
    assert len(cache.entries()) == 1
    assert [path.name for path in (cache.root / "entries").iterdir()] == [folders[0].name]  # no temporary left
    assert cache.lookup(key) is not None
