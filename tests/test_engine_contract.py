"""The engine contract (models/engines/contract.py), the same cases on every engine that runs in this environment: the batched
engine and the serial one, on the real tiny model. vLLM's engine runs the same contract through real vLLM in
tests/test_vllm_stop.py and tests/integration/test_vllm_engine.py (it needs vLLM's environment).

- a request is opened, streamed and finished, its pieces joining into its text;
- every decoding option is honoured (answered) or refused by name at submit, as the engine declares;
- a stop set by the caller ends the request, counted in ``stats.cancelled``, and the engine goes on;
- out of memory is answered as such (the drills' double at the model boundary), and the engine goes on;
- a sink that leaves (its caller gone: it raises) does not stop the engine.
"""

import dataclasses
import threading

import numpy as np
import pytest
from polling import wait_for_condition

from memory.estimate import load_model_config
from models.decoding.grammar_server import SchemaCompileLimits
from models.engines.start import EngineSettings, start_engine
from models.engines.transformers.serial_scheduler import SerialScheduler
from models.errors import InvalidParameterError, RequestOutOfMemoryError, StreamOutOfMemoryError
from models.fault_injection import SIMULATE_OOM_ABOVE_PIXELS_ENV
from models.media.request_shrink import ShrinkFloor
from models.requests import ChatMessage, DecodingOptions, GenerationRequest, ImagePart, ResponseFormat, TextPart

pytestmark = pytest.mark.component

SETTINGS = EngineSettings(
    max_batch_size=4, max_waiting=8, headroom_bytes=1 << 30, max_prefill_tokens=8192,
    shrink_floor=ShrinkFloor(min_frames=2, min_pixels_per_frame=3136), schema_compile=SchemaCompileLimits(time_limit_s=10),
    name="contract",
)
# One value away from each option's default (DecodingOptions: the defaults change nothing).
NON_DEFAULT = {
    "top_p": 0.5, "top_k": 5, "min_p": 0.1, "presence_penalty": 0.5, "frequency_penalty": 0.5,
    "repetition_penalty": 1.2, "logit_bias": ((1, 1.0),), "min_tokens": 1, "ignore_eos": True, "stop": ("zz",),
    "logprobs": True, "top_logprobs": 2, "response_format": ResponseFormat("json_object"),
}
TIMEOUT_S = 60


def _request(*parts, max_new_tokens: int = 6, options: DecodingOptions = DecodingOptions()) -> GenerationRequest:
    return GenerationRequest(messages=(ChatMessage("user", parts or (TextPart("hi"),)),), max_new_tokens=max_new_tokens,
                             options=options)


class Sink:
    """A request's caller: what the engine sent, in order; ``leave_at`` names the call where it goes away (raises)."""

    streams_text = True

    def __init__(self, leave_at: str | None = None) -> None:
        self.calls: list[str] = []
        self.pieces: list[str] = []
        self.result = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._leave_at = leave_at
        self._left = False

    def _called(self, name: str) -> None:
        self.calls.append(name)
        if name == self._leave_at or self._left:  # gone: this call and every later one raise
            self._left = True
            self.done.set()
            raise ConnectionError("the client went away")

    def opened(self, used, retries, cost, prompt_tokens: int = 0) -> None:
        self._called("opened")

    def text(self, delta) -> None:
        self._called("text")
        self.pieces.append(delta.text)

    def finished(self, result) -> None:
        self.result = result
        self._called("finished")
        self.done.set()

    def failed(self, error: BaseException) -> None:
        self.error = error
        self._called("failed")
        self.done.set()


@pytest.fixture(params=["batched", "serial"])
def engine(request, tiny_adapter, tiny_model_path):
    if request.param == "serial":  # what an adapter with its own generate loop is served by
        made = SerialScheduler(tiny_adapter, max_waiting=SETTINGS.max_waiting)
    else:
        made = start_engine(tiny_adapter, tiny_adapter.strategy, load_model_config(str(tiny_model_path)), SETTINGS)
    yield made
    made.close(timeout_s=10)


def _answered(engine, request: GenerationRequest) -> Sink:
    sink = Sink()
    engine.submit(request, sink, threading.Event())
    assert sink.done.wait(TIMEOUT_S), f"no answer within {TIMEOUT_S} s"
    return sink


def test_a_request_is_opened_streamed_and_finished(engine):
    sink = _answered(engine, _request(max_new_tokens=8))

    assert sink.error is None and sink.result is not None
    assert sink.calls[0] == "opened" and sink.calls[-1] == "finished" and sink.calls.count("finished") == 1
    assert "".join(sink.pieces) == sink.result.text
    assert sink.result.completion_tokens >= 1 and sink.result.prompt_tokens > 0
    assert engine.health_problem() is None


@pytest.mark.parametrize("option", sorted(NON_DEFAULT))
def test_every_decoding_option_is_honoured_or_refused_by_name(engine, option):
    assert {field.name for field in dataclasses.fields(DecodingOptions)} == set(NON_DEFAULT)  # a new option: add it
    request = _request(options=DecodingOptions(**{option: NON_DEFAULT[option]}))

    if option in engine.capabilities.decoding_options:
        sink = _answered(engine, request)
        assert sink.error is None and sink.result is not None, sink.error
    else:
        with pytest.raises(InvalidParameterError) as refused:
            engine.submit(request, Sink(), threading.Event())
        assert refused.value.param == option


def test_a_stop_ends_the_request_counted_and_the_engine_goes_on(engine):
    long = Sink()
    engine.submit(_request(max_new_tokens=2000, options=DecodingOptions(ignore_eos=True))
                  if "ignore_eos" in engine.capabilities.decoding_options else _request(max_new_tokens=2000), long,
                  threading.Event())
    stopped, stop = Sink(), threading.Event()
    engine.submit(_request(), stopped, stop)  # behind the long one (serial), or beside it (batched)
    stop.set()

    wait_for_condition(lambda: engine.stats.cancelled >= 1, timeout_s=TIMEOUT_S)
    assert stopped.result is None or stopped.result.completion_tokens < 2000  # never ran, or ended at its next step
    assert _answered(engine, _request()).result is not None


def test_out_of_memory_is_answered_as_such_and_the_engine_goes_on(engine, monkeypatch):
    monkeypatch.setenv(SIMULATE_OOM_ABOVE_PIXELS_ENV, "1")  # any picture is too much, even shrunk to the floor
    picture = ImagePart(np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8))

    sink = _answered(engine, _request(picture, TextPart("What is it?")))

    assert isinstance(sink.error, (RequestOutOfMemoryError, StreamOutOfMemoryError)), sink.error
    assert engine.stats.request_ooms >= 1
    assert _answered(engine, _request()).result is not None  # text only: under the threshold
    assert engine.health_problem() is None


@pytest.mark.parametrize("leave_at", ["opened", "text"])
def test_a_sink_that_leaves_does_not_stop_the_engine(engine, leave_at):
    leaving = Sink(leave_at=leave_at)
    engine.submit(_request(max_new_tokens=8), leaving, threading.Event())
    assert leaving.done.wait(TIMEOUT_S)

    assert _answered(engine, _request()).result is not None
    assert engine.health_problem() is None
