"""The bridge from the engine's thread to the replica's event loop: text pieces that arrived together go to the
caller as one (one Ray message, not one a token), in order, and nothing else is joined or lost."""

import asyncio
import threading

import pytest

from deployments.replica.stream_bridge import Opened, StreamBridge
from memory.admission import RequestCost
from models.requests import ChatMessage, GenerationRequest, GenerationResult, TextDelta, TextPart, TokenLogprob

pytestmark = pytest.mark.unit

REQUEST = GenerationRequest(messages=(ChatMessage("user", (TextPart("hi"),)),), max_new_tokens=8)
COST = RequestCost(kv_cache_bytes=0, vision_bytes=0, prefill_bytes=0)


def _from_engine_thread(bridge: StreamBridge, *calls) -> None:
    """Run the sink's calls in a thread of their own, as the engine does, and wait for them."""
    thread = threading.Thread(target=lambda: [call(bridge) for call in calls])
    thread.start()
    thread.join()


def test_pieces_waiting_together_are_handed_over_as_one_and_the_answer_after_them():
    async def scenario() -> list:
        bridge = StreamBridge(asyncio.get_running_loop())
        first, second = TokenLogprob("a", -0.1, ()), TokenLogprob("b", -0.2, ())
        _from_engine_thread(
            bridge,
            lambda sink: sink.opened(REQUEST, (), COST, 5),
            lambda sink: sink.text(TextDelta("a", (first,), completion_tokens=1)),
            lambda sink: sink.text(TextDelta("b", (second,), completion_tokens=2)),
            lambda sink: sink.text(TextDelta("c", (), completion_tokens=3)),
            lambda sink: sink.finished(GenerationResult("abc", 5, 3, "length")),
        )
        await asyncio.sleep(0)  # the loop runs the calls the thread scheduled
        return [await bridge.next() for _ in range(3)]

    opened, text, result = asyncio.run(scenario())

    assert isinstance(opened, Opened) and opened.prompt_tokens == 5
    assert text == TextDelta("abc", (TokenLogprob("a", -0.1, ()), TokenLogprob("b", -0.2, ())), completion_tokens=3)
    assert result == GenerationResult("abc", 5, 3, "length")


def test_a_piece_alone_goes_at_once_and_an_error_after_pieces_comes_after_them():
    async def scenario() -> tuple:
        bridge = StreamBridge(asyncio.get_running_loop())
        _from_engine_thread(bridge, lambda sink: sink.text(TextDelta("x", completion_tokens=1)))
        await asyncio.sleep(0)
        alone = await bridge.next()
        _from_engine_thread(
            bridge,
            lambda sink: sink.text(TextDelta("y", completion_tokens=2)),
            lambda sink: sink.failed(MemoryError("out of memory at step 3")),
        )
        await asyncio.sleep(0)
        before_error = await bridge.next()
        with pytest.raises(MemoryError, match="step 3"):
            await bridge.next()
        return alone, before_error

    alone, before_error = asyncio.run(scenario())

    assert alone == TextDelta("x", completion_tokens=1)
    assert before_error == TextDelta("y", completion_tokens=2)
