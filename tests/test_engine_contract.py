"""The engine contract (models/engines/contract.py), the same cases (tests/engine_contract_cases.py) on every engine:
the batched engine and the serial one on the real tiny model here, and vLLM's engine on real vLLM (its CPU build,
the tiny model) in vLLM's own environment, which skips, saying how to build it, without that environment."""

import json

import pytest
from engine_contract_cases import CASES, OUT_OF_MEMORY_CASE
from vllm_scripts import run_in_vllm_environment

from memory.estimate import load_model_config
from models.decoding.grammar_server import SchemaCompileLimits
from models.engines.start import EngineSettings, start_engine
from models.engines.transformers.serial_scheduler import SerialScheduler
from models.fault_injection import SIMULATE_OOM_ABOVE_PIXELS_ENV
from models.media.request_shrink import ShrinkMinimum

pytestmark = pytest.mark.component

SETTINGS = EngineSettings(
    max_batch_size=4, max_waiting=8, headroom_bytes=1 << 30, max_prefill_tokens=8192,
    shrink_minimum=ShrinkMinimum(min_frames=2, min_pixels_per_frame=3136), schema_compile=SchemaCompileLimits(time_limit_s=10),
    name="contract",
)


@pytest.fixture(params=["batched", "serial"])
def engine(request, tiny_adapter, tiny_model_path):
    if request.param == "serial":  # what an adapter with its own generate loop is served by
        made = SerialScheduler(tiny_adapter, max_waiting=SETTINGS.max_waiting)
    else:
        made = start_engine(tiny_adapter, tiny_adapter.strategy, load_model_config(str(tiny_model_path)), SETTINGS)
    yield made
    made.close(timeout_s=10)


@pytest.mark.parametrize("case", sorted(CASES))
def test_our_engines_meet_the_contract(engine, case):
    CASES[case](engine)


def test_our_engines_answer_out_of_memory_and_go_on(engine, monkeypatch):
    monkeypatch.setenv(SIMULATE_OOM_ABOVE_PIXELS_ENV, "1")  # any picture is too much, even shrunk to the floor
    OUT_OF_MEMORY_CASE(engine)


VLLM_SCRIPT = """
import json, sys, traceback
sys.path.insert(0, "tests")
from engine_contract_cases import CASES
from memory.budget import MemoryBudget
from models.decoding.grammar_server import SchemaCompileLimits
from models.engines.vllm import VLLM
from models.engines.vllm.adapter import VllmAdapter, VllmSettings
from models.engines.vllm.memory_plan import VllmShape

budget = MemoryBudget(device="cpu", weights_bytes=8 * 2**30, limit_bytes=8 * 2**30, available_bytes=8 * 2**30,
                      context_bytes=0, reserve_bytes=0)
settings = VllmSettings(shape=VllmShape(kv_bytes_per_token=4096, max_model_len=4096, max_num_seqs=4),
                        limit_mm_per_prompt={"image": 1, "video": 1}, share=1.0, num_threads=1, compile="eager")
(link,) = VLLM.parse_chain(["fp32"], "cpu")
adapter = VllmAdapter(sys.argv[1], link, settings=settings, weights_bytes=2_000_000, budget=lambda: budget)
adapter.load()
engine = adapter.own_engine(max_batch_size=4, max_waiting=8, name="contract",
                            schema_compile=SchemaCompileLimits(time_limit_s=10))
outcomes = {}
for name, case in sorted(CASES.items()):
    try:
        case(engine)
        outcomes[name] = None
    except BaseException as error:
        outcomes[name] = "".join(traceback.format_exception(error))[-1500:]
engine.close()
adapter.unload()
print(json.dumps(outcomes))
"""


@pytest.mark.vllm
def test_vllms_engine_meets_the_contract(tiny_model_path):
    outcomes = run_in_vllm_environment("-c", VLLM_SCRIPT, str(tiny_model_path))

    assert set(outcomes) == set(CASES)
    failed = {name: error for name, error in outcomes.items() if error is not None}
    assert failed == {}, json.dumps(failed, indent=1)
