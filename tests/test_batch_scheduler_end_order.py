"""The batch scheduler on the real tiny model: a request that ends before one admitted ahead of it leaves the batch
cleanly. Tickets are told apart by identity: comparing them field by field reached the requests' frames (numpy
arrays of other shapes) and failed the whole batch step, every running request with it (seen under the hostile
bench: a job segment of 2 frames beside a chat of 8)."""

import threading

import numpy as np
import pytest

from memory.estimate import load_model_config
from models.decoding.grammar_server import SchemaCompileLimits
from models.engines.start import EngineSettings, start_engine
from models.engines.warm_up import answer_through
from models.media.request_shrink import ShrinkMinimum
from models.requests import ChatMessage, DecodingOptions, GenerationRequest, TextPart, VideoPart

pytestmark = pytest.mark.unit


def _video_request(frames: int, side: int, new_tokens: int) -> GenerationRequest:
    pixels = np.random.default_rng(frames).integers(0, 256, (frames, side, side, 3), dtype=np.uint8)
    return GenerationRequest(
        messages=(ChatMessage("user", (VideoPart(pixels), TextPart("What happens?"))),),
        max_new_tokens=new_tokens, options=DecodingOptions(ignore_eos=True),
    )


def test_a_request_that_ends_first_leaves_the_batch_whatever_its_place(tiny_adapter, tiny_model_path):
    settings = EngineSettings(
        max_batch_size=4, max_waiting=8, headroom_bytes=1 << 30, max_prefill_tokens=8192,
        shrink_minimum=ShrinkMinimum(min_frames=2, min_pixels_per_frame=3136), schema_compile=SchemaCompileLimits(), name="order",
    )
    engine = start_engine(tiny_adapter, tiny_adapter.strategy, load_model_config(str(tiny_model_path)), settings)
    try:
        long_request, short_request = _video_request(2, 48, 64), _video_request(8, 96, 2)
        results: dict[str, object] = {}
        first = threading.Thread(target=lambda: results.__setitem__("long", answer_through(engine, long_request, timeout_s=120)))
        first.start()
        # The short one is admitted behind the long one, and ends (2 tokens) while the long one still runs.
        results["short"] = answer_through(engine, short_request, timeout_s=120)
        first.join(timeout=120)
    finally:
        engine.close()
    assert results["short"].completion_tokens == 2
    assert results["long"].completion_tokens == 64
    assert engine.stats.peak_batch_size == 2  # they ran together
