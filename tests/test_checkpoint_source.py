"""A model in an object store, on a real S3 server (moto's): fetched once per node, whole or not at all, fetched again
when the store's copy changes; planning reads only the metadata; quantized loads shared between nodes' caches."""

import json
import shutil
import threading

import fsspec
import pytest
from s3_server import storage_options

from memory.strategy import parse_strategy
from models.adapters.hf_adapter import HuggingFaceVisionLanguageAdapter
from models.checkpoint_source import MANIFEST, CheckpointSourceError, fetch_checkpoint, local_copy_folder
from models.weight_cache import WeightCache

pytestmark = pytest.mark.component  # a real S3 server


@pytest.fixture
def bucket(s3_endpoint, request):
    name = f"models-{abs(hash(request.node.name)) % 10**8}"
    fs = fsspec.filesystem("s3", **storage_options(s3_endpoint), skip_instance_cache=True)
    fs.mkdir(name)
    return name, fs


def _upload(fs, folder, url):
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{url}/{path.relative_to(folder).as_posix()}")


def _files(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*")
            if path.is_file() and path.name != MANIFEST}


def test_the_checkpoint_is_fetched_whole_once_per_node_and_again_when_the_store_changes(tiny_model_path, bucket, s3_endpoint, tmp_path):
    name, fs = bucket
    url = f"s3://{name}/models/tiny"
    _upload(fs, tiny_model_path, url)
    node = tmp_path / "node-cache"
    options = storage_options(s3_endpoint)

    folders, errors = [], []

    def fetch():
        try:
            folders.append(fetch_checkpoint(url, node, storage_options=options))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=fetch) for _ in range(3)]  # three processes of one node starting at once
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == [] and len(set(folders)) == 1
    folder = folders[0]
    assert _files(folder) == _files(tiny_model_path)
    manifest_written = (folder / MANIFEST).stat().st_mtime_ns
    assert fetch_checkpoint(url, node, storage_options=options) == folder
    assert (folder / MANIFEST).stat().st_mtime_ns == manifest_written  # the second use fetched nothing
    assert [path.name for path in folder.parent.iterdir() if ".partial-" in path.name] == []

    fs.pipe_file(f"{url}/config.json", b'{"changed": true}')  # the store's copy is replaced
    again = fetch_checkpoint(url, node, storage_options=options)
    assert json.loads((again / "config.json").read_text()) == {"changed": True}


def test_planning_fetches_the_metadata_only(tiny_model_path, bucket, s3_endpoint, tmp_path):
    name, fs = bucket
    url = f"s3://{name}/models/tiny"
    _upload(fs, tiny_model_path, url)

    folder = fetch_checkpoint(url, tmp_path, storage_options=storage_options(s3_endpoint), metadata_only=True)

    names = set(_files(folder))
    assert {"config.json", "processor_config.json", "tokenizer.json", "chat_template.jinja"} <= names
    assert not [name for name in names if name.endswith(".safetensors")]
    assert folder == local_copy_folder(url, tmp_path, metadata_only=True) != local_copy_folder(url, tmp_path)


def test_a_prefix_without_a_checkpoint_is_a_clear_error_that_leaves_nothing(bucket, s3_endpoint, tmp_path):
    name, fs = bucket
    fs.pipe_file(f"s3://{name}/models/half/model.safetensors", b"x" * 10)

    with pytest.raises(CheckpointSourceError, match=r"holds no config.json \(1 files there\); upload the checkpoint folder"):
        fetch_checkpoint(f"s3://{name}/models/half", tmp_path, storage_options=storage_options(s3_endpoint))
    assert not local_copy_folder(f"s3://{name}/models/half", tmp_path).exists()


def test_a_quantized_load_on_one_node_is_fetched_by_another_through_the_shared_weight_cache(
    tiny_model_path, bucket, s3_endpoint, tmp_path
):
    name, fs = bucket
    shared = f"s3://{name}/weights"
    options = storage_options(s3_endpoint)
    first_node = WeightCache(tmp_path / "a", max_bytes=1 << 30, shared_url=shared, storage_options=options)
    second_node = WeightCache(tmp_path / "b", max_bytes=1 << 30, shared_url=shared, storage_options=options)
    strategy = parse_strategy("int8", "cpu")

    first = HuggingFaceVisionLanguageAdapter(str(tiny_model_path), strategy=strategy, weight_cache=first_node)
    first.load()
    assert first.describe()["weights_from"] == "checkpoint"
    (entry,) = first_node.entries()
    assert fs.exists(f"{shared}/{entry[0].name}/vd-manifest.json")

    second = HuggingFaceVisionLanguageAdapter(str(tiny_model_path), strategy=strategy, weight_cache=second_node)
    second.load()

    assert second.describe()["weights_from"].startswith("weight cache")
    assert [folder.name for folder, _, _ in second_node.entries()] == [entry[0].name]


def test_a_corrupt_shared_entry_is_refused_by_the_local_check_and_the_model_quantized_again(
    tiny_model_path, bucket, s3_endpoint, tmp_path
):
    name, fs = bucket
    shared = f"s3://{name}/weights"
    options = storage_options(s3_endpoint)
    strategy = parse_strategy("int8", "cpu")
    first_node = WeightCache(tmp_path / "a", max_bytes=1 << 30, shared_url=shared, storage_options=options)
    HuggingFaceVisionLanguageAdapter(str(tiny_model_path), strategy=strategy, weight_cache=first_node).load()
    (entry,) = first_node.entries()
    weights = next(path for path in fs.find(f"{shared}/{entry[0].name}") if path.endswith(".safetensors"))
    body = bytearray(fs.cat_file(weights))
    body[-1] ^= 0xFF  # same size, other bytes: only the SHA-256 tells
    fs.pipe_file(weights, bytes(body))

    second_node = WeightCache(tmp_path / "b", max_bytes=1 << 30, shared_url=shared, storage_options=options)
    second = HuggingFaceVisionLanguageAdapter(str(tiny_model_path), strategy=strategy, weight_cache=second_node)
    second.load()

    assert second.describe()["weights_from"] == "checkpoint"
    shutil.rmtree(tmp_path / "a")
