"""A real generation on a freshly started engine, before its replica says it is ready.

Triton and vLLM both run a forward pass before they serve. Ours runs one request through the engine exactly as a
client's would go (the engine's own submit, admission, prefill, decode and detokenizer): a short text prompt, with a
small image where the model takes images. A link that loads but cannot answer it (a transformers version its code
does not know, a broken kernel, a processor that refuses the image) never serves: the loading chain hands over to
the next link (:class:`memory.chain_load.UnusableLinkError`).
"""

import dataclasses
import threading

import numpy as np

from memory.admission import RequestCost
from models.engines.contract import Engine
from models.media.request_shrink import OomRetry
from models.requests import ChatMessage, GenerationRequest, GenerationResult, ImagePart, TextDelta, TextPart

WARM_UP_PROMPT = "Describe this."
WARM_UP_IMAGE_SIDE = 64  # pixels: above every supported processor's minimum (Qwen2-VL's is 56 x 56), small to encode
WARM_UP_NEW_TOKENS = 2


class WarmUpError(RuntimeError):
    """The warm-up request did not come back with an answer."""


def warm_up_request(*, with_image: bool) -> GenerationRequest:
    """The warm-up request: greedy, two new tokens, and a gradient image when the model takes images."""
    parts: tuple = (TextPart(WARM_UP_PROMPT),)
    if with_image:
        ramp = np.linspace(0, 255, WARM_UP_IMAGE_SIDE, dtype=np.uint8)
        pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], np.full_like(ramp[:, None], 128)), axis=-1)
        parts = (ImagePart(np.ascontiguousarray(pixels)), *parts)
    return GenerationRequest(messages=(ChatMessage(role="user", content=parts),), max_new_tokens=WARM_UP_NEW_TOKENS)


@dataclasses.dataclass
class _Collector:
    """A :class:`~models.engines.contract.RequestSink` that keeps the answer or the error."""

    streams_text: bool = False
    result: GenerationResult | None = None
    error: BaseException | None = None
    done: threading.Event = dataclasses.field(default_factory=threading.Event)

    def opened(self, used: GenerationRequest, retries: tuple[OomRetry, ...], cost: RequestCost, prompt_tokens: int = 0) -> None:
        pass

    def text(self, delta: TextDelta) -> None:
        pass

    def finished(self, result: GenerationResult) -> None:
        self.result = result
        self.done.set()

    def failed(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


def answer_through(engine: Engine, request: GenerationRequest, *, timeout_s: float) -> GenerationResult:
    """Send ``request`` through ``engine`` and wait for its answer; raise what it failed with (the engine's own
    error, or :class:`WarmUpError` when no answer came within ``timeout_s``)."""
    sink, stop = _Collector(), threading.Event()
    engine.submit(request, sink, stop)
    if not sink.done.wait(timeout_s):
        stop.set()
        raise WarmUpError(f"the request had no answer within {timeout_s:g} s")
    if sink.error is not None:
        raise sink.error
    if sink.result is None:
        raise WarmUpError("the engine ended the request without an answer or an error")
    return sink.result


def run_warm_up(engine: Engine, *, with_image: bool, timeout_s: float) -> GenerationResult:
    """The warm-up request's answer through ``engine`` (:func:`answer_through`)."""
    return answer_through(engine, warm_up_request(with_image=with_image), timeout_s=timeout_s)
