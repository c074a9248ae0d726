"""vLLM's engine (its CPU build, in its own environment) and a request whose caller left before vLLM had it:
the stop is checked before the request reaches vLLM, so nothing is generated for it (the watcher's abort alone
could come before vLLM registered the request, find nothing, and let it run to its last token). Skipped
without vLLM's environment."""

import pytest
from vllm_scripts import run_in_vllm_environment

pytestmark = [pytest.mark.component, pytest.mark.vllm]

SCRIPT = """
import json, sys, threading, time
from memory.budget import MemoryBudget
from memory.strategy import parse_strategy
from models.engines.vllm.memory_plan import VllmShape
from models.decoding.grammar_server import SchemaCompileLimits
from models.requests import ChatMessage, DecodingOptions, GenerationRequest, TextPart
from models.engines.vllm.adapter import VllmAdapter, VllmSettings

path = sys.argv[1]
budget = MemoryBudget(device="cpu", weights_bytes=8 * 2**30, limit_bytes=8 * 2**30, available_bytes=8 * 2**30,
                      context_bytes=0, reserve_bytes=0)
shape = VllmShape(kv_bytes_per_token=4096, max_model_len=4096, max_num_seqs=4)
settings = VllmSettings(shape=shape, limit_mm_per_prompt={"image": 1, "video": 1}, share=1.0, num_threads=1,
                        compile="eager")  # compiled is the integration test's (test_vllm_engine)
adapter = VllmAdapter(path, parse_strategy("fp32", "cpu", "vllm"), settings=settings, weights_bytes=2_000_000,
                      budget=lambda: budget)
adapter.load()
engine = adapter.own_engine(max_batch_size=4, max_waiting=4, name="stop", schema_compile=SchemaCompileLimits())

class Sink:
    streams_text = True
    def __init__(self): self.done = threading.Event(); self.outcome = None
    def opened(self, *args): pass
    def text(self, delta): pass
    def finished(self, result): self.outcome = ("finished", result.completion_tokens); self.done.set()
    def failed(self, error): self.outcome = ("failed", repr(error)); self.done.set()

request = GenerationRequest(messages=(ChatMessage("user", (TextPart("Go on."),)),), max_new_tokens=3000,
                            options=DecodingOptions(ignore_eos=True))
results = []
for _ in range(5):
    stop = threading.Event()
    stop.set()  # the caller left before the request reached vLLM
    before = engine.stats.cancelled
    sink = Sink()
    engine.submit(request, sink, stop)
    deadline = time.monotonic() + 120
    while engine.stats.cancelled == before and not sink.done.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    results.append({"cancelled": engine.stats.cancelled - before, "tokens": engine.stats.last_cancelled_tokens,
                    "outcome": sink.outcome})
engine.close()
adapter.unload()
print(json.dumps(results))
"""


def test_a_request_stopped_before_vllm_had_it_generates_nothing(tiny_model_path):
    results = run_in_vllm_environment("-c", SCRIPT, str(tiny_model_path))

    assert results == [{"cancelled": 1, "tokens": 0, "outcome": None}] * 5
