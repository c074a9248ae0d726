import json
import subprocess
import sys

import pytest

from memory.allocator import (
    ALLOC_CONF_ALIAS_ENV,
    ALLOC_CONF_ENV,
    AllocatorConfigError,
    allocator_env,
    parse_alloc_conf,
    refuse_folklore_env,
    validate_allocator_settings,
)

pytestmark = pytest.mark.unit


def test_the_default_is_expandable_segments_under_both_names():
    assert allocator_env() == {ALLOC_CONF_ENV: "expandable_segments:True", ALLOC_CONF_ALIAS_ENV: "expandable_segments:True"}


def test_settings_render_in_pytorch_syntax():
    env = allocator_env({"expandable_segments": False, "garbage_collection_threshold": 0.8, "max_split_size_mb": 256})

    assert env[ALLOC_CONF_ENV] == "expandable_segments:False,garbage_collection_threshold:0.8,max_split_size_mb:256"


def test_a_typo_names_the_key_it_meant():
    with pytest.raises(AllocatorConfigError, match="expandible_segments: not a PyTorch allocator key; did you mean 'expandable_segments'"):
        allocator_env({"expandible_segments": True})


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"max_split_size_mb": 10}, "at least 20"),
        ({"garbage_collection_threshold": 1.5}, "fraction between 0 and 1"),
        ({"backend": "magic"}, "'native' or 'cudaMallocAsync'"),
        ({"roundup_power2_divisions": 3}, "power of two"),
        ({"per_process_memory_fraction": 0.5}, "set from the replica's GPU share"),
    ],
)
def test_bad_values_fail_when_the_config_loads(settings, fragment):
    with pytest.raises(AllocatorConfigError, match=fragment):
        validate_allocator_settings(settings)


def test_every_problem_is_listed():
    with pytest.raises(AllocatorConfigError) as raised:
        validate_allocator_settings({"typo_key": 1, "max_split_size_mb": 1})

    assert "typo_key" in str(raised.value) and "max_split_size_mb" in str(raised.value)


def test_list_values_parse_whole():
    assert parse_alloc_conf("expandable_segments:True,roundup_power2_divisions:[256:1,>:8]") == {
        "expandable_segments": "True",
        "roundup_power2_divisions": "[256:1,>:8]",
    }


@pytest.mark.parametrize("name", ["CUDA_LAUNCH_BLOCKING", "PYTORCH_CUDA_MEMORY_FRACTION"])
def test_folklore_environment_is_refused_with_the_reason(name):
    with pytest.raises(AllocatorConfigError, match=name):
        refuse_folklore_env({name: "1"})
    refuse_folklore_env({"PYTORCH_ALLOC_CONF": "expandable_segments:True"})  # fine


def _read_back(script: str, env: dict[str, str]) -> dict:
    completed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True, timeout=120)
    return json.loads(completed.stdout)


READ_BACK = "import json; from memory.allocator import read_allocator_settings; print(json.dumps(read_allocator_settings().to_dict()))"


def test_settings_in_the_environment_before_torch_starts_take_effect(monkeypatch):
    env = {**allocator_env({"expandable_segments": True, "max_split_size_mb": 128}), "PATH": "/usr/bin:/bin"}

    report = _read_back(READ_BACK, env)

    assert report["requested"] == {"expandable_segments": "True", "max_split_size_mb": "128"}
    assert report["effective"] == report["requested"]
    assert report["matches"] is True


def test_settings_changed_after_the_allocator_read_them_are_reported_as_not_in_effect():
    script = (
        "import json, os, torch\n"
        "torch._C._accelerator_getAllocatorSettings()  # the allocator reads its config here\n"
        "os.environ['PYTORCH_ALLOC_CONF'] = 'max_split_size_mb:64'\n"
        "from memory.allocator import read_allocator_settings\n"
        "print(json.dumps(read_allocator_settings().to_dict()))"
    )

    report = _read_back(script, {"PYTORCH_ALLOC_CONF": "expandable_segments:True", "PATH": "/usr/bin:/bin"})

    assert report["requested"] == {"max_split_size_mb": "64"}
    assert report["effective"] == {"expandable_segments": "True"}
    assert report["matches"] is False
