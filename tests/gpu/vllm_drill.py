"""Run in vLLM's environment by tests/gpu/test_vllm_shares.py: start vLLM through our planner on a GPU share, answer
one request, print what happened as one JSON line, and hold the engine until stdin closes (so a second replica
starts beside a first that holds its memory).

    python tests/gpu/vllm_drill.py MODEL_DIR SHARE LINK [LINK ...]    # links: bf16, fp8, nf4
"""

import json
import sys
import threading

from memory.budget import DEFAULT_CUDA_CONTEXT_BYTES
from memory.chain_estimate import estimate_chain
from memory.estimate import load_model_config
from memory.gpu import measure_gpu_budget
from memory.strategy import parse_chain
from models.decoding.grammar_server import SchemaCompileLimits
from models.engines.vllm.adapter import VllmAdapter, VllmSettings
from models.engines.vllm.memory_plan import VllmShape
from models.requests import ChatMessage, GenerationRequest, TextPart


class _Sink:
    def __init__(self) -> None:
        self.result = None
        self.error = None
        self.done = threading.Event()

    def opened(self, used, retries, cost, prompt_tokens=0) -> None:
        pass

    def text(self, delta) -> None:
        pass

    def finished(self, result) -> None:
        self.result = result
        self.done.set()

    def failed(self, error) -> None:
        self.error = error
        self.done.set()


def main() -> None:
    model_dir, share, names = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    config = load_model_config(model_dir)
    links = parse_chain(names, "cuda", "vllm")
    estimates = estimate_chain(config, links)
    shape = VllmShape(kv_bytes_per_token=2 * 4 * 2 * 128 * 2, max_model_len=4096, max_num_seqs=8)
    for link in links:
        budget = measure_gpu_budget(share=share, context_bytes=DEFAULT_CUDA_CONTEXT_BYTES, reserve_bytes=256 * 1024**2)
        adapter = VllmAdapter(model_dir, link, weights_bytes=estimates[link].total_bytes, budget=lambda: budget,
                              settings=VllmSettings(shape=shape, limit_mm_per_prompt={"image": 1, "video": 1},
                                                    share=share, num_threads=4, compile="auto"))
        adapter.load()
        engine = adapter.own_engine(max_batch_size=8, max_waiting=8, name=f"drill-{link.name}",
                                    schema_compile=SchemaCompileLimits())
        sink = _Sink()
        request = GenerationRequest(messages=(ChatMessage("user", (TextPart("Describe the scene."),)),), max_new_tokens=16)
        engine.submit(request, sink, threading.Event())
        sink.done.wait(300)
        print(json.dumps({"link": link.name, "plan": adapter.plan.to_dict(), "budget": budget.to_dict(),
                          "completion_tokens": sink.result.completion_tokens if sink.result else None,
                          "error": repr(sink.error) if sink.error else None}), flush=True)
        if link is not links[-1]:
            engine.close()
            adapter.unload()
    sys.stdin.read()  # hold the engine (and its memory) until the test lets go
    engine.close()
    adapter.unload()


if __name__ == "__main__":
    main()
