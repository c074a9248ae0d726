"""The engine contract's cases (models/engines/contract.py), written once for every engine: plain functions that
raise AssertionError, with no pytest, so that vLLM's environment (which has no pytest) runs them on vLLM's engine
exactly as tests/test_engine_contract.py runs them on ours.

- a request is opened, streamed and finished, its pieces joining into its text;
- every decoding option is honoured (answered) or refused by name at submit, as the engine declares;
- a stop set by the caller ends the request, counted in ``stats.cancelled``, and the engine goes on;
- a sink that leaves (its caller gone: it raises) does not stop the engine;
- out of memory is answered as such, and the engine goes on (engines that allocate per request: see
  :data:`OUT_OF_MEMORY_CASE`).
"""

import dataclasses
import os
import threading
import time
from typing import Any, Callable

import numpy as np

from models.errors import InvalidParameterError, RequestOutOfMemoryError, StreamOutOfMemoryError
from models.fault_injection import SIMULATE_OOM_ABOVE_PIXELS_ENV
from models.requests import ChatMessage, DecodingOptions, GenerationRequest, ImagePart, ResponseFormat, TextPart

# One value away from each option's default (DecodingOptions: the defaults change nothing).
NON_DEFAULT = {
    "top_p": 0.5, "top_k": 5, "min_p": 0.1, "presence_penalty": 0.5, "frequency_penalty": 0.5,
    "repetition_penalty": 1.2, "logit_bias": ((1, 1.0),), "min_tokens": 1, "ignore_eos": True, "stop": ("zz",),
    "logprobs": True, "top_logprobs": 2, "response_format": ResponseFormat("json_object"),
}
TIMEOUT_S = 60


def request(*parts, max_new_tokens: int = 6, options: DecodingOptions = DecodingOptions()) -> GenerationRequest:
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


def answered(engine: Any, generation_request: GenerationRequest) -> Sink:
    sink = Sink()
    engine.submit(generation_request, sink, threading.Event())
    assert sink.done.wait(TIMEOUT_S), f"no answer within {TIMEOUT_S} s"
    return sink


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {TIMEOUT_S} s"
        time.sleep(0.05)


def opened_streamed_and_finished(engine: Any) -> None:
    sink = answered(engine, request(max_new_tokens=8))

    assert sink.error is None and sink.result is not None, sink.error
    assert sink.calls[0] == "opened" and sink.calls[-1] == "finished" and sink.calls.count("finished") == 1, sink.calls
    assert "".join(sink.pieces) == sink.result.text, (sink.pieces, sink.result.text)
    assert sink.result.completion_tokens >= 1 and sink.result.prompt_tokens > 0, sink.result
    assert engine.health_problem() is None, engine.health_problem()


def option_honoured_or_refused_by_name(engine: Any, option: str) -> None:
    assert {field.name for field in dataclasses.fields(DecodingOptions)} == set(NON_DEFAULT), "a new option: add it"
    option_request = request(options=DecodingOptions(**{option: NON_DEFAULT[option]}))
    if option in engine.capabilities.decoding_options:
        sink = answered(engine, option_request)
        assert sink.error is None and sink.result is not None, sink.error
        return
    try:
        engine.submit(option_request, Sink(), threading.Event())
    except InvalidParameterError as refused:
        assert refused.param == option, (refused.param, option)
    else:
        raise AssertionError(f"{option} is not among the engine's options, yet it was taken")


def a_stop_ends_the_request_counted_and_the_engine_goes_on(engine: Any) -> None:
    honours_ignore_eos = "ignore_eos" in engine.capabilities.decoding_options
    long = request(max_new_tokens=2000, options=DecodingOptions(ignore_eos=honours_ignore_eos))
    engine.submit(long, Sink(), threading.Event())
    stopped, stop = Sink(), threading.Event()
    cancelled_before = engine.stats.cancelled
    engine.submit(request(), stopped, stop)  # behind the long one (serial), or beside it (batched)
    stop.set()

    _wait_for(lambda: engine.stats.cancelled > cancelled_before, "the stopped request counted as cancelled")
    assert stopped.result is None or stopped.result.completion_tokens < 2000  # never ran, or ended at its next step
    assert answered(engine, request()).result is not None


def a_sink_that_leaves_does_not_stop_the_engine(engine: Any, leave_at: str) -> None:
    leaving = Sink(leave_at=leave_at)
    engine.submit(request(max_new_tokens=8), leaving, threading.Event())
    assert leaving.done.wait(TIMEOUT_S)

    assert answered(engine, request()).result is not None
    assert engine.health_problem() is None, engine.health_problem()


def out_of_memory_is_answered_and_the_engine_goes_on(engine: Any) -> None:
    """Needs ``SIMULATE_OOM_ABOVE_PIXELS_ENV`` set to 1 (the drills' double at the model boundary)."""
    assert os.environ.get(SIMULATE_OOM_ABOVE_PIXELS_ENV) == "1"
    picture = ImagePart(np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8))

    sink = answered(engine, request(picture, TextPart("What is it?")))

    assert isinstance(sink.error, (RequestOutOfMemoryError, StreamOutOfMemoryError)), sink.error
    assert engine.stats.request_ooms >= 1
    assert answered(engine, request()).result is not None  # text only: under the threshold
    assert engine.health_problem() is None


# Every engine's cases, by name. Out of memory is not among them: our engines allocate per request and answer one
# that does not fit; vLLM holds its KV cache from its start and preempts a request rather than allocate past it, so
# there is no request-level out-of-memory to answer (one inside its engine core ends the engine, which the replica's
# health reports: tests/integration/test_vllm_engine.py).
CASES: dict[str, Callable[[Any], None]] = {
    "opened_streamed_and_finished": opened_streamed_and_finished,
    **{f"option_{name}": (lambda engine, name=name: option_honoured_or_refused_by_name(engine, name))
       for name in sorted(NON_DEFAULT)},
    "a_stop_ends_the_request": a_stop_ends_the_request_counted_and_the_engine_goes_on,
    **{f"a_sink_that_leaves_at_{call}": (lambda engine, call=call: a_sink_that_leaves_does_not_stop_the_engine(engine, call))
       for call in ("opened", "text")},
}
OUT_OF_MEMORY_CASE = out_of_memory_is_answered_and_the_engine_goes_on
