"""Run the transformers engine on a checkpoint in whatever Python runs this file, and print what it answered as JSON.

``tests/test_vllm_environment.py`` runs it in vLLM's environment (transformers as vLLM pins it) and in the project's,
and compares: the transformers links of a group on ``engine: vllm`` run there.

Usage: ``python tests/engine_drill.py MODEL_FOLDER PRECISION [PRECISION ...]``
"""

import json
import sys
import threading

import numpy as np
from transformers import __version__ as transformers_version

from memory.estimate import load_model_config
from memory.strategy import parse_strategy
from models.adapters.hf_adapter import HuggingFaceVisionLanguageAdapter
from models.decoding.grammar_server import SchemaCompileLimits
from models.engines.start import EngineSettings, start_engine
from models.engines.warm_up import answer_through, run_warm_up
from models.media.request_shrink import ShrinkMinimum
from models.requests import ChatMessage, DecodingOptions, GenerationRequest, ImagePart, TextPart, VideoPart


def _requests() -> dict[str, GenerationRequest]:
    rng = np.random.default_rng(7)
    image = ImagePart(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    video = VideoPart(rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8), timestamps_s=(0.0, 1.0, 2.0, 3.0))

    def ask(*parts) -> GenerationRequest:
        return GenerationRequest(
            messages=(ChatMessage("user", tuple(parts)),), max_new_tokens=6, options=DecodingOptions(logprobs=True)
        )

    return {
        "text": ask(TextPart("What is the capital of France?")),
        "image": ask(image, TextPart("What is in the picture?")),
        "video": ask(video, TextPart("What happens?")),
    }


def _answer(engine, request: GenerationRequest) -> dict:
    result = answer_through(engine, request, timeout_s=120)
    return {"text": result.text, "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "logprobs": [token.logprob for token in result.logprobs or ()]}


def drill(model_path: str, precision: str) -> dict:
    adapter = HuggingFaceVisionLanguageAdapter(model_path, strategy=parse_strategy(precision, "cpu"))
    adapter.load()
    settings = EngineSettings(
        max_batch_size=4, max_waiting=8, headroom_bytes=1 << 30, max_prefill_tokens=8192,
        shrink_minimum=ShrinkMinimum(min_frames=2, min_pixels_per_frame=3136), schema_compile=SchemaCompileLimits(time_limit_s=10), name="drill",
    )
    engine = start_engine(adapter, adapter.strategy, load_model_config(model_path), settings)
    try:
        warm = run_warm_up(engine, with_image=True, timeout_s=120)
        answers = {kind: _answer(engine, request) for kind, request in _requests().items()}
        together: list[dict] = [{} for _ in range(3)]
        threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, _answer(engine, _requests()["image"])))
                   for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return {"warm_up_tokens": warm.completion_tokens, "answers": answers, "batched": together,
                "peak_batch_size": engine.stats.peak_batch_size}
    finally:
        engine.close()
        adapter.unload()


if __name__ == "__main__":
    folder, *precisions = sys.argv[1:]
    print(json.dumps({"transformers": transformers_version, **{name: drill(folder, name) for name in precisions}}))
