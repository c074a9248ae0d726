import json
import pathlib

import pytest
import yaml

from deployments.config.app_config import AppConfig, ConfigError, load_app_config
from deployments.plan import resolve_app
from models.adapters.choice import choose_adapter

pytestmark = pytest.mark.unit

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_empty_args_give_the_defaults():
    config = load_app_config({})

    assert config == AppConfig()
    assert config.model.model_id == "tiny-qwen2-vl"
    assert config.ingress.access_log is False


def test_serve_config_yaml_args_validate():
    serve_config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    (application,) = serve_config["applications"]

    config = load_app_config(application["args"])

    assert application["import_path"] == "deployments.app:build_app"
    assert config.model.source == "tiny"
    assert serve_config["http_options"] == {"host": "127.0.0.1", "port": 8000, "request_timeout_s": 600}


def test_an_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"limits\.max_frame: unknown key"):
        load_app_config({"limits": {"max_frame": 3}})


def test_a_bad_value_is_named_with_what_was_given():
    with pytest.raises(ConfigError, match=r"limits\.video_frames: Input should be greater than 0 \(got 0\)"):
        load_app_config({"limits": {"video_frames": 0}})


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as raised:
        load_app_config({"cpu_group": {"chain": ["int3"]}, "ingress": {"num_replicas": 0}, "typo": 1})

    message = str(raised.value)
    assert "cpu_group.chain: Unknown strategy 'int3'" in message
    assert "ingress.num_replicas" in message
    assert "typo: unknown key" in message


def test_default_tokens_above_the_limit_are_refused_with_both_numbers():
    with pytest.raises(ConfigError, match=r"default_max_tokens \(600\) must be less than or equal to limits.max_tokens \(512\)"):
        load_app_config({"limits": {"default_max_tokens": 600}})


def test_a_model_folder_that_does_not_exist_is_refused(tmp_path):
    missing = tmp_path / "no-such-model"

    with pytest.raises(ConfigError, match="neither 'tiny', an existing checkpoint folder nor an object store URL"):
        load_app_config({"model": {"source": str(missing)}})


def test_a_model_in_an_object_store_is_taken_and_named_after_its_folder():
    config = load_app_config({"model": {"source": "s3://models/checkpoints/Qwen2-VL-2B/", "weight_cache_url": "s3://models/w"}})

    assert config.model.model_id == "Qwen2-VL-2B"


def test_an_object_store_fsspec_cannot_open_and_a_local_shared_weight_cache_are_refused():
    with pytest.raises(ConfigError, match="model.source 'nosuch://bucket/m': fsspec cannot open nosuch://"):
        load_app_config({"model": {"source": "nosuch://bucket/m"}})
    with pytest.raises(ConfigError, match="model.weight_cache_url '/srv/weights' is not an object store URL"):
        load_app_config({"model": {"weight_cache_url": "/srv/weights"}})


def _checkpoint(tmp_path, name: str, config: dict):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_checkpoint_folder_names_the_model(tmp_path):
    folder = _checkpoint(tmp_path, "Qwen2.5-VL-7B-Instruct", {"model_type": "qwen2_5_vl"})

    config = load_app_config({"model": {"source": str(folder)}})

    assert config.model.model_id == "Qwen2.5-VL-7B-Instruct"
    assert load_app_config({"model": {"source": str(folder), "served_name": "qwen"}}).model.model_id == "qwen"


def test_the_app_builder_serve_calls_refuses_a_wrong_key_with_its_name():
    from deployments.app import build_app

    with pytest.raises(ConfigError, match=r"gpu_group\.num_gpu: unknown key"):
        build_app({"gpu_group": {"num_gpu": 1}})


def test_the_app_builder_refuses_a_wrong_value_with_its_name():
    from deployments.app import build_app

    with pytest.raises(ConfigError, match=r"gpu_group\.num_gpus: Input should be a share of one GPU, .*less than or equal to 1, or 'auto' \(got 2\)"):
        build_app({"gpu_group": {"num_gpus": 2}})
    with pytest.raises(ConfigError, match=r"gpu_group\.num_gpus: .* \(got 'half'\)"):
        build_app({"gpu_group": {"num_gpus": "half"}})


def test_folklore_environment_in_a_group_is_refused():
    with pytest.raises(ConfigError, match="CUDA_LAUNCH_BLOCKING='1': it serialises every kernel launch"):
        load_app_config({"gpu_group": {"env_vars": {"CUDA_LAUNCH_BLOCKING": "1"}}})


def test_max_replicas_below_min_names_both_numbers():
    with pytest.raises(ConfigError, match=r"max_replicas \(1\) must be greater than or equal to min_replicas \(2\)"):
        load_app_config({"cpu_group": {"autoscaling": {"min_replicas": 2, "max_replicas": 1}}})


@pytest.mark.parametrize("engine, batch, held", [("transformers", 8, 16), ("vllm", 64, 128), ("auto", 64, 128)])
def test_a_groups_unset_limits_follow_its_engine(engine, batch, held):
    config = load_app_config({"cpu_group": {"engine": engine}, "gpu_group": {"engine": engine}})

    for group in (config.cpu_group, config.gpu_group):
        assert (group.max_batch_size, group.max_ongoing_requests) == (batch, held)


def test_limits_set_are_kept_and_an_unset_batch_stays_within_the_requests_held():
    config = load_app_config({"cpu_group": {"engine": "vllm", "max_ongoing_requests": 12},
                              "gpu_group": {"engine": "vllm", "max_batch_size": 4}})

    assert (config.cpu_group.max_batch_size, config.cpu_group.max_ongoing_requests) == (12, 12)
    assert (config.gpu_group.max_batch_size, config.gpu_group.max_ongoing_requests) == (4, 128)


def test_a_batch_set_above_the_requests_held_is_refused_with_both_numbers():
    with pytest.raises(ConfigError, match=r"max_batch_size \(32\) must be less than or equal to max_ongoing_requests \(16\)"):
        load_app_config({"cpu_group": {"max_batch_size": 32}})


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision", "smolvlm", "internvl", "minicpmv4_6"])
def test_native_families_are_served_by_the_transformers_adapter(tmp_path, model_type):
    folder = _checkpoint(tmp_path, "model", {"model_type": model_type})

    assert choose_adapter(folder, "auto", trust_remote_code=False) == "transformers"


def test_minicpm_v_2_6_needs_trust_remote_code_and_says_so(tmp_path):
    folder = _checkpoint(tmp_path, "MiniCPM-V-2_6", {"model_type": "minicpmv", "auto_map": {"AutoModel": "modeling_minicpmv.MiniCPMV"}})

    with pytest.raises(ConfigError, match="set model.trust_remote_code: true"):
        resolve_app(load_app_config({"model": {"source": str(folder)}}))
    config = load_app_config({"model": {"source": str(folder), "trust_remote_code": True}})
    assert choose_adapter(folder, config.model.adapter, trust_remote_code=True) == "minicpm-v-2.6"


def test_an_unknown_model_type_lists_what_is_served(tmp_path):
    folder = _checkpoint(tmp_path, "whisper", {"model_type": "whisper"})

    with pytest.raises(ConfigError, match="model_type 'whisper' .* has no adapter here: transformers serves"):
        resolve_app(load_app_config({"model": {"source": str(folder)}}))


def test_the_minicpm_adapter_cannot_serve_the_tiny_model():
    with pytest.raises(ConfigError, match="needs a MiniCPM-V 2.6 checkpoint"):
        load_app_config({"model": {"adapter": "minicpm-v-2.6"}})


def test_remote_urls_stay_off_unless_a_prefix_is_allowed():
    assert load_app_config({}).media.remote_url_allow_list == ()
    with pytest.raises(ConfigError, match="must be an http\\(s\\) URL prefix with a host and no user info"):
        load_app_config({"media": {"remote_url_allow_list": ["file:///etc/"]}})
    with pytest.raises(ConfigError, match="no user info"):
        load_app_config({"media": {"remote_url_allow_list": ["https://user@media.example.com/"]}})


def test_default_frames_above_the_frame_limit_is_refused():
    with pytest.raises(ConfigError, match="limits.video_frames \\(40\\) must be less than or equal to limits.max_video_frames \\(32\\)"):
        load_app_config({"limits": {"video_frames": 40}})


def test_the_config_as_written_and_its_resolved_plan_are_two_types():
    config = load_app_config({"gpu_group": {"num_gpus": 0.5, "min_precision": "int8", "floor": {"max_replicas": 3, "num_gpus": 0.2}}})

    plan = resolve_app(config)

    assert config.gpu_group.floor.num_gpus == 0.2 and config.gpu_group.chain == ("bf16", "int8", "nf4")
    assert sorted(plan.groups) == ["cpu", "gpu", "gpu_floor"]
    floor = plan.group("gpu_floor")
    assert (floor.num_gpus, floor.settings.chain, [strategy.name for strategy in floor.strategies]) == (0.2, ("int8",), ["int8"])
    assert (floor.settings.autoscaling.min_replicas, floor.settings.autoscaling.max_replicas) == (0, 3)
    assert plan.group("cpu").num_gpus == 0.0 and plan.adapter == "transformers"


def test_the_plan_derives_what_requests_may_use_and_how_each_group_runs_once():
    small = resolve_app(load_app_config({"limits": {"max_prompt_tokens": 300, "max_tokens": 200}}))
    large = resolve_app(load_app_config({"limits": {"max_prompt_tokens": 8000, "max_tokens": 4000}}))

    assert small.max_model_len == 500  # prompt and answer
    assert large.max_model_len == 4096  # capped by the tiny model's max_position_embeddings
    gpu, cpu = small.group("gpu"), small.group("cpu")
    assert (gpu.on_gpu_share, gpu.waits_for_load) == (True, False)  # falls back at once
    assert (cpu.on_gpu_share, cpu.waits_for_load) == (False, True)  # the last resort waits for its load


def test_a_disabled_group_is_not_in_the_plan_and_asking_for_it_says_so():
    plan = resolve_app(load_app_config({"gpu_group": {"enabled": False}}))

    assert sorted(plan.groups) == ["cpu"]
    with pytest.raises(ValueError, match=r"Replica group 'gpu' is not in this plan \(enabled: \['cpu'\]\)"):
        plan.group("gpu")
