"""The planner's arithmetic for vLLM: a replica's budget as gpu_memory_utilization or a CPU KV cache, the chain's
vLLM links and what they are priced at, and the group settings that name them. No vLLM needed."""

import dataclasses
import subprocess
import sys

import pytest

from deployments.config.app_config import ConfigError, load_app_config
from memory.budget import MemoryBudget, cpu_budget, gpu_budget
from memory.probe import GpuDeviceMemory, MemorySnapshot
from memory.strategy import StrategyError, parse_strategy
from models.engines.transformers import TRANSFORMERS
from models.engines.vllm import VLLM
from models.engines.vllm.memory_plan import (
    CUDA_GRAPH_RESERVE_BYTES,
    VLLM_CPU_PROCESS_BYTES,
    VllmPlanError,
    VllmShape,
    engine_overhead_bytes,
    plan_vllm_compile,
    plan_vllm_memory,
)

pytestmark = pytest.mark.component

GIB = 1024**3
# Qwen2-VL-2B's text widths in bf16: 28 layers x 2 KV heads x 128 x 2 (K, V) x 2 bytes.
SHAPE = VllmShape(kv_bytes_per_token=28 * 2 * 128 * 2 * 2, max_model_len=8192, max_num_seqs=8)


def _card(free_bytes: int, total_bytes: int = 80 * GIB) -> GpuDeviceMemory:
    return GpuDeviceMemory(index=0, name="H100", total_bytes=total_bytes, free_bytes=free_bytes)


def test_two_replicas_on_a_045_share_each_never_ask_for_more_than_their_share():
    first = plan_vllm_memory(
        gpu_budget(_card(80 * GIB), share=0.45, context_bytes=GIB // 2, reserve_bytes=GIB),
        device="cuda", weights_bytes=4 * GIB, shape=SHAPE, share=0.45,
    )
    # The first replica took its 36 GiB: the second sees 44 GiB free and still asks for its share only.
    second = plan_vllm_memory(
        gpu_budget(_card(44 * GIB), share=0.45, context_bytes=GIB // 2, reserve_bytes=GIB),
        device="cuda", weights_bytes=4 * GIB, shape=SHAPE, share=0.45,
    )

    assert first.gpu_memory_utilization == second.gpu_memory_utilization == 0.45
    assert first.gpu_memory_utilization + second.gpu_memory_utilization <= 0.9
    assert first.engine_args() == {"gpu_memory_utilization": 0.45, "mm_processor_cache_gb": 0.0}
    assert first.kv_cache_bytes == int(80 * GIB * 0.45) - GIB // 2 - GIB - 4 * GIB
    assert "min(share 0.45 x 80.00 GiB, free 80.00 GiB)" in first.explanation


def test_cuda_graphs_where_the_kv_cache_above_its_minimum_holds_their_reserve_and_eager_where_it_does_not():
    roomy = plan_vllm_memory(gpu_budget(_card(80 * GIB), share=0.45, context_bytes=GIB // 2, reserve_bytes=GIB),
                             device="cuda", weights_bytes=4 * GIB, shape=SHAPE, share=0.45)
    # 224 MiB (one sequence) + the graphs' 1 GiB: a 6 GiB share with 4 GiB of weights leaves 0.5 GiB of KV cache.
    tight = plan_vllm_memory(gpu_budget(_card(80 * GIB, 80 * GIB), share=0.075, context_bytes=GIB // 2, reserve_bytes=GIB),
                             device="cuda", weights_bytes=4 * GIB, shape=SHAPE, share=0.075)
    assert tight.kv_cache_bytes - tight.min_kv_cache_bytes < CUDA_GRAPH_RESERVE_BYTES <= roomy.kv_cache_bytes - roomy.min_kv_cache_bytes

    compiled, eager = plan_vllm_compile("auto", roomy), plan_vllm_compile("auto", tight)

    assert compiled.compiled and compiled.engine_args() == {"enforce_eager": False}
    assert "CUDA graphs" in compiled.reason and "holds their reserve of 1.00 GiB" in compiled.reason
    assert not eager.compiled and eager.engine_args() == {"enforce_eager": True}
    assert "less than CUDA graphs' reserve of 1.00 GiB" in eager.reason
    assert eager.to_dict() == {"mode": "eager", "reason": eager.reason}


def test_on_the_cpu_auto_compiles_and_the_config_can_say_either_way():
    host = MemorySnapshot(process_rss_bytes=0, system_total_bytes=64 * GIB, system_available_bytes=64 * GIB)
    plan = plan_vllm_memory(cpu_budget(host, configured_bytes=8 * GIB, reserve_bytes=GIB), device="cpu", weights_bytes=GIB,
                            shape=SHAPE)

    assert plan_vllm_compile("auto", plan).compiled
    assert "cached for later starts" in plan_vllm_compile("auto", plan).reason
    assert not plan_vllm_compile("eager", plan).compiled
    assert plan_vllm_compile("compiled", plan).reason == "vllm_compile: compiled in the group's config"
    with pytest.raises(ConfigError, match="vllm_compile"):
        load_app_config({"cpu_group": {"vllm_compile": "sometimes"}})


def test_a_card_with_less_free_than_the_share_gets_what_is_free_rounded_down():
    plan = plan_vllm_memory(
        gpu_budget(_card(30 * GIB), share=0.5, context_bytes=GIB // 2, reserve_bytes=GIB),
        device="cuda", weights_bytes=4 * GIB, shape=SHAPE, share=0.5,
    )

    assert plan.gpu_memory_utilization == 0.375  # 30 / 80, never above what is free
    assert plan.gpu_memory_utilization * 80 * GIB <= 30 * GIB


def test_too_little_for_one_full_length_sequence_is_refused_with_the_numbers():
    budget = gpu_budget(_card(5 * GIB + 600 * 1024**2), share=0.5, context_bytes=GIB // 2, reserve_bytes=GIB)

    with pytest.raises(VllmPlanError) as refused:
        plan_vllm_memory(budget, device="cuda", weights_bytes=4 * GIB, shape=SHAPE, share=0.5)

    assert isinstance(refused.value, MemoryError)  # the chain goes on to its next link
    assert "at least 224.00 MiB (one sequence of 8192 tokens x 28672 bytes)" in str(refused.value)
    assert "leaves 88.00 MiB" in str(refused.value)


def test_on_the_cpu_the_kv_cache_is_what_the_budget_leaves_capped_at_what_the_sequences_use():
    host = MemorySnapshot(process_rss_bytes=0, system_total_bytes=64 * GIB, system_available_bytes=64 * GIB)
    roomy = cpu_budget(host, configured_bytes=16 * GIB, reserve_bytes=GIB)
    tight = cpu_budget(host, configured_bytes=8 * GIB, reserve_bytes=GIB)

    capped = plan_vllm_memory(roomy, device="cpu", weights_bytes=4 * GIB, shape=SHAPE)
    left = plan_vllm_memory(tight, device="cpu", weights_bytes=4 * GIB, shape=SHAPE)

    assert capped.kv_cache_bytes == SHAPE.max_kv_cache_bytes == 8 * 8192 * 28672
    assert left.kv_cache_bytes == 8 * GIB - GIB - VLLM_CPU_PROCESS_BYTES - 4 * GIB
    assert left.engine_args() == {"kv_cache_memory_bytes": left.kv_cache_bytes, "mm_processor_cache_gb": 0.0}
    assert left.gpu_memory_utilization is None


def test_vllms_processor_cache_is_the_groups_media_cache_and_on_the_cpu_its_two_copies_come_out_of_the_kv_cache():
    host = MemorySnapshot(process_rss_bytes=0, system_total_bytes=64 * GIB, system_available_bytes=64 * GIB)
    tight = cpu_budget(host, configured_bytes=8 * GIB, reserve_bytes=GIB)
    shape = dataclasses.replace(SHAPE, embedding_bytes_per_token=1536 * 2)

    plain = plan_vllm_memory(tight, device="cpu", weights_bytes=4 * GIB, shape=shape)
    cached = plan_vllm_memory(tight, device="cpu", weights_bytes=4 * GIB, shape=shape, processor_cache_bytes=GIB // 4)

    assert plain.kv_cache_bytes - cached.kv_cache_bytes == 2 * GIB // 4
    assert cached.engine_args()["mm_processor_cache_gb"] == 0.25
    assert cached.processor_cache_bytes == GIB // 4 and "2 x media cache 256.00 MiB" in cached.explanation
    assert cached.encoder_cache_bytes == shape.max_num_batched_tokens * 1536 * 2  # vLLM's: one pass of tokens


def test_a_gpu_groups_chain_run_on_the_cpu_gets_vllms_cpu_arguments():
    budget = MemoryBudget(device="cuda", weights_bytes=6 * GIB, limit_bytes=8 * GIB, available_bytes=8 * GIB,
                          context_bytes=0, reserve_bytes=2 * GIB)

    plan = plan_vllm_memory(budget, device="cpu", weights_bytes=GIB, shape=SHAPE)

    assert set(plan.engine_args()) == {"kv_cache_memory_bytes", "mm_processor_cache_gb"}


def test_a_vllm_link_is_priced_with_its_smallest_kv_cache_and_on_the_cpu_its_processes():
    assert engine_overhead_bytes("cuda", SHAPE) == {"min_kv_cache_bytes": 8192 * 28672}
    assert engine_overhead_bytes("cpu", SHAPE) == {"min_kv_cache_bytes": 8192 * 28672, "vllm_processes_bytes": VLLM_CPU_PROCESS_BYTES}


def test_vllm_links_are_named_apart_and_take_fp8_but_not_int8():
    assert parse_strategy("bf16", "cuda", "vllm").name == "vllm-bf16"
    assert parse_strategy("bf16", "cuda").name == "bf16"
    assert [link.name for link in VLLM.parse_chain(["bf16", "fp8", "nf4"], "cuda")] == ["vllm-bf16", "vllm-fp8", "vllm-nf4"]
    with pytest.raises(StrategyError, match="Unknown strategy 'int8' for the vllm engine"):
        VLLM.parse_chain(["int8"], "cuda")
    with pytest.raises(StrategyError, match="Unknown strategy 'fp8' for the transformers engine"):
        TRANSFORMERS.parse_chain(["fp8"], "cuda")


def test_a_group_on_vllm_tries_its_vllm_links_first_and_keeps_its_floor():
    config = load_app_config({"gpu_group": {"engine": "vllm", "min_precision": "fp8", "chain": ["bf16", "int8"]}})
    gpu = config.gpu_group

    links = {engine: [link.name for link in chain] for engine, chain in gpu.engine_strategies().items()}
    assert links == {"vllm": ["vllm-bf16", "vllm-fp8"], "transformers": ["bf16"]}  # nf4 and int8 are below the floor
    assert list(load_app_config({}).gpu_group.engine_strategies()) == ["transformers"]
    on_auto = load_app_config({"cpu_group": {"engine": "auto"}}).cpu_group.engine_strategies()
    assert [link.name for link in on_auto["vllm"]] == ["vllm-fp32"]


def test_a_vllm_chain_naming_a_precision_vllm_lacks_is_refused_at_start_up():
    with pytest.raises(ConfigError, match="Unknown strategy 'int8' for the vllm engine"):
        load_app_config({"gpu_group": {"engine": "vllm", "vllm_chain": ["bf16", "int8"]}})
    with pytest.raises(ConfigError, match="engine"):
        load_app_config({"gpu_group": {"engine": "tensorrt"}})


def test_auto_runs_transformers_where_vllm_does_not_import_and_says_why(tiny_model_path):
    from deployments.replica.engine_chain import choose_engine

    choice = choose_engine("auto", str(tiny_model_path))

    assert choice.engine == "transformers"
    assert f"vLLM does not import in this environment ({sys.executable}" in choice.reason
    assert choose_engine("transformers", str(tiny_model_path)).reason == "engine: transformers in the group's config"


@pytest.mark.vllm
def test_auto_runs_vllm_in_vllms_environment_for_an_architecture_it_supports(tiny_model_path, tmp_path):
    from models.engines.vllm import DEFAULT_VLLM_PYTHON

    if not DEFAULT_VLLM_PYTHON.is_file():
        pytest.skip(f"vLLM's environment is not built ({DEFAULT_VLLM_PYTHON}): run bin/ensure-vllm-venv")
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text('{"architectures": ["NoSuchModelForCausalLM"]}')
    script = (
        "import sys; from deployments.replica.engine_chain import choose_engine; "
        "print(choose_engine('auto', sys.argv[1]).engine); print(choose_engine('auto', sys.argv[2]).reason)"
    )
    done = subprocess.run([str(DEFAULT_VLLM_PYTHON), "-c", script, str(tiny_model_path), str(unknown)],
                          capture_output=True, text=True, timeout=300, check=True)

    engine, reason = done.stdout.strip().splitlines()[-2:]
    assert engine == "vllm"
    assert "does not support ['NoSuchModelForCausalLM']: the transformers chain serves" in reason


def test_the_mid_size_model_on_vllm_fits_the_cpu_groups_default_budget_priced_by_vllms_own_activations(tmp_path):
    """The mid-size Qwen2-VL on the CPU group's defaults (8 GiB, limits.max_prompt_tokens 8192): priced by vLLM's own
    model (weights, its smallest KV cache, its processes; its activations for 2048 batched tokens), not the
    transformers engine's eager-attention reserve, the vLLM link fits with room for its KV cache."""
    from bench.mid_model import write_mid_model_files
    from deployments.plan import resolve_app
    from deployments.replica.engine_chain import priced
    from memory.chain_estimate import estimate_chain
    from memory.estimate import load_model_config
    from models.engines.spec import LinkContext
    from models.engines.vllm.links import vllm_shape

    folder = write_mid_model_files(tmp_path / "mid")
    config = load_app_config({"model": {"source": str(folder)}, "cpu_group": {"engine": "vllm"}})
    plan = resolve_app(config)
    settings, model_config = plan.group("cpu").settings, load_model_config(str(folder))
    (link,) = settings.engine_strategies()["vllm"]
    context = LinkContext(
        model_config=model_config, settings=settings, max_model_len=plan.max_model_len,
        largest_request=plan.largest_request, max_media_parts=1, trust_remote_code=False, adapter_family=plan.adapter,
        max_slice_nums=1, weight_cache=None, share=1.0, budget=lambda: None,
    )
    shape = vllm_shape(context, link)
    price = VLLM.links().price(link, context)
    estimate = priced(estimate_chain(model_config, (link,))[link], price)
    (reserve, reserve_name) = price.reserve
    host = MemorySnapshot(process_rss_bytes=0, system_total_bytes=24 * GIB, system_available_bytes=20 * GIB)

    by_vllm = cpu_budget(host, configured_bytes=settings.memory_bytes, reserve_bytes=reserve, reserve_name=reserve_name)
    by_transformers = cpu_budget(host, configured_bytes=settings.memory_bytes, reserve_bytes=plan.group("cpu").reserve_bytes)

    assert settings.memory_bytes == 8 * GIB and shape.max_num_batched_tokens == 2048
    assert estimate.total_bytes <= by_vllm.weights_bytes
    # The transformers reserve prices 12 heads x 8192^2 fp32 scores; vLLM's attention keeps none.
    assert reserve * 3 < plan.group("cpu").reserve_bytes
    assert by_vllm.weights_bytes - by_transformers.weights_bytes == plan.group("cpu").reserve_bytes - reserve
    parts = estimate.parts()
    assert list(parts) == ["weights_bytes", "min_kv_cache_bytes", "vllm_processes_bytes"]
    assert sum(parts.values()) == estimate.total_bytes and parts["vllm_processes_bytes"] == VLLM_CPU_PROCESS_BYTES
    assert "vLLM's activations (2048 batched tokens)" in by_vllm.explain()


def test_vllms_profiling_media_are_the_largest_our_limits_let_through():
    from models.engines.spec import LinkContext
    from models.engines.vllm.links import media_limits

    context = LinkContext(
        model_config=None, settings=None, max_model_len=4096, largest_request=None, max_media_parts=3,
        trust_remote_code=False, adapter_family="hf", max_slice_nums=1, weight_cache=None, share=1.0, budget=lambda: None,
        max_video_frames=16, max_pixels_per_frame=448 * 448,
    )

    assert media_limits(context) == {
        "image": {"count": 3, "width": 448, "height": 448},
        "video": {"count": 3, "num_frames": 16, "width": 448, "height": 448},
    }
