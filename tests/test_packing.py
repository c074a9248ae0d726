"""num_gpus auto: the share arithmetic (pure), the config keys, and the plan from a real model's config."""

import pytest

from deployments.config.app_config import ConfigError, load_app_config
from deployments.plan import resolve_app
from memory.packing import PackingError, at_or_above, plan_share, smallest_share

pytestmark = pytest.mark.unit

GIB = 1024**3


def test_the_smallest_share_on_the_grid_holds_the_need():
    assert smallest_share(20 * GIB, 80 * GIB, 0.05) == 0.25  # exactly a quarter
    assert smallest_share(20 * GIB + 1, 80 * GIB, 0.05) == 0.3
    assert smallest_share(1, 80 * GIB, 0.05) == 0.05  # never below one step
    assert smallest_share(81 * GIB, 80 * GIB, 0.05) > 1.0  # does not fit one card
    assert smallest_share(30 * GIB, 80 * GIB, 0.125) == 0.375


def test_the_plan_takes_the_chains_first_precision_that_fits_a_card():
    weights = {"bf16": 90 * GIB, "int8": 18 * GIB, "nf4": 9 * GIB}

    plan = plan_share(weights, total_bytes=80 * GIB, reserve_bytes=GIB, context_bytes=GIB)

    assert [option.fits for option in plan.options] == [False, True, True]
    assert plan.chosen.precision == "int8"
    assert plan.chosen.need_bytes == 20 * GIB and plan.chosen.share == 0.25 and plan.chosen.replicas_per_gpu == 4
    assert plan.options[2].share == 0.15 and plan.options[2].replicas_per_gpu == 6
    assert "int8  weights 18.00 GiB, needs 20.00 GiB (25.0%): share 0.25, 4 a GPU" in plan.explain()
    assert plan.to_dict()["num_gpus"] == 0.25


def test_when_nothing_fits_the_error_lists_each_need_and_what_to_change():
    with pytest.raises(PackingError, match=r"bf16 needs 92.00 GiB; int8 needs 48.00 GiB\. Add a smaller precision"):
        plan_share({"bf16": 90 * GIB, "int8": 46 * GIB}, total_bytes=40 * GIB, reserve_bytes=GIB, context_bytes=GIB)


def test_a_quality_floor_drops_the_precisions_below_it():
    assert at_or_above(("bf16", "int8", "nf4"), "int8") == ("bf16", "int8")
    assert at_or_above(("fp32", "bf16", "int8", "nf4"), None) == ("fp32", "bf16", "int8", "nf4")
    assert at_or_above(("nf4",), "int8") == ()


def test_the_config_takes_auto_and_a_floor_and_names_what_is_wrong():
    config = load_app_config({"gpu_group": {"num_gpus": "auto", "gpu_total_bytes": 80 * GIB, "min_precision": "int8"}})
    assert config.gpu_group.num_gpus == "auto"
    assert [strategy.name for strategy in config.gpu_group.strategies()] == ["bf16", "int8"]
    with pytest.raises(ConfigError, match="num_gpus"):
        load_app_config({"gpu_group": {"num_gpus": "half"}})
    with pytest.raises(ConfigError, match=r"min_precision 'int8' leaves nothing of the chain \['nf4'\]"):
        load_app_config({"gpu_group": {"chain": ["nf4"], "min_precision": "int8"}})


def test_auto_plans_a_real_models_share_and_replicas_get_a_number(tiny_model_path):
    args = {"gpu_group": {"num_gpus": "auto", "gpu_total_bytes": GIB << 10, "chain": ["int8", "nf4"]}}
    roomy = resolve_app(load_app_config(args)).share_plan
    need = roomy.chosen.need_bytes  # the tiny model's int8 weights, its activation reserve and the CUDA context
    assert roomy.chosen.precision == "int8" and need > roomy.options[1].need_bytes

    # A card on which the int8 replica needs 23%: a quarter of it, 4 replicas a card.
    args["gpu_group"]["gpu_total_bytes"] = int(need / 0.23)
    app = resolve_app(load_app_config(args))
    plan = app.share_plan

    assert app.group("gpu").num_gpus == 0.25 and app.config.gpu_group.num_gpus == "auto"  # the config stays as written
    assert plan.chosen.precision == "int8" and plan.chosen.replicas_per_gpu == 4
    unchanged = resolve_app(load_app_config({"gpu_group": {"num_gpus": 0.5}}))
    assert unchanged.group("gpu").num_gpus == 0.5 and unchanged.share_plan is None


def test_auto_without_a_gpu_or_its_size_says_what_to_set(tiny_model_path):
    with pytest.raises(ConfigError, match="set gpu_group.gpu_total_bytes"):
        resolve_app(load_app_config({"gpu_group": {"num_gpus": "auto"}}))


def test_the_floor_replicas_need_a_precision_in_the_chain_and_say_so():
    with pytest.raises(ConfigError, match="set gpu_group.min_precision to the precision the floor replicas load at"):
        load_app_config({"gpu_group": {"floor": {"max_replicas": 2}}})
    with pytest.raises(ConfigError, match=r"floor replicas load at min_precision 'int8', which is not in the chain"):
        load_app_config({"gpu_group": {"chain": ["bf16", "nf4"], "min_precision": "int8", "floor": {"max_replicas": 2}}})
    with pytest.raises(ConfigError, match="gpu_group.floor.num_gpus"):
        load_app_config({"gpu_group": {"floor": {"num_gpus": 1.5}}})
    assert not load_app_config({}).floor_enabled


def test_the_floor_replicas_run_the_floor_alone_on_their_own_share_from_zero(tiny_model_path):
    # Small request limits and no CUDA context, so that the tiny model's weights are most of what a replica needs.
    small_requests = {"video_frames": 1, "max_video_frames": 1, "max_tokens": 8, "default_max_tokens": 8,
                      "max_prompt_tokens": 64, "max_pixels_per_frame": 3136, "max_image_pixels": 3136,
                      "max_media_parts": 1, "max_request_frames": 1, "max_request_pixels": 3136}
    args = {
        "limits": small_requests,
        "gpu_group": {
            "num_gpus": "auto", "chain": ["bf16", "int8", "nf4"], "min_precision": "int8", "cuda_context_bytes": 0,
            "autoscaling": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 3},
            "floor": {"max_replicas": 5},
        }
    }
    roomy = resolve_app(load_app_config({**args, "gpu_group": {**args["gpu_group"], "gpu_total_bytes": GIB << 10}})).share_plan
    bf16_need, int8_need = (option.need_bytes for option in roomy.options)
    # A card on which a bf16 replica needs just under a quarter: the GPU group gets 0.25, the floor its own share.
    total = int(bf16_need / 0.24)
    app = resolve_app(load_app_config({**args, "gpu_group": {**args["gpu_group"], "gpu_total_bytes": total}}))
    plan, floor = app.share_plan, app.group("gpu_floor").settings

    assert plan.chosen.precision == "bf16" and app.group("gpu").num_gpus == 0.25
    assert floor.num_gpus == smallest_share(int8_need, total, 0.05) < 0.25
    assert [strategy.name for strategy in app.group("gpu_floor").strategies] == ["int8"]
    assert (floor.autoscaling.min_replicas, floor.autoscaling.max_replicas, floor.autoscaling.target_ongoing_requests) == (0, 5, 3)
    assert app.group("gpu").settings.chain == app.config.gpu_group.chain and app.config.floor_enabled


def test_a_fixed_floor_share_is_kept_and_needs_no_gpu_size(tiny_model_path):
    args = {"gpu_group": {"num_gpus": 0.5, "min_precision": "int8", "floor": {"max_replicas": 2, "num_gpus": 0.2}}}

    app = resolve_app(load_app_config(args))

    assert app.share_plan is None and app.group("gpu_floor").num_gpus == 0.2
    with pytest.raises(ConfigError, match=r"gpu_group.num_gpus \(or gpu_group.floor.num_gpus\) is 'auto'"):
        resolve_app(load_app_config({"gpu_group": {**args["gpu_group"], "floor": {"max_replicas": 2}}}))
