"""The MiniCPM-V 2.6 adapter's ``model.chat`` call, built from our requests without the model.

Loading the model itself needs its checkpoint (weights and its own Python files) at hand, which
this machine cannot download; docs/operations.md says how to point the server at one.
"""

import numpy as np
import pytest
from PIL import Image

from memory.strategy import parse_strategy
from models.adapters.minicpm_v_2_6 import MiniCpmV26Adapter, build_chat_call
from models.requests import ChatMessage, GenerationRequest, ImagePart, TextPart, VideoPart

pytestmark = pytest.mark.unit


def _frames(count: int) -> np.ndarray:
    return np.stack([np.full((32, 48, 3), index * 10, dtype=np.uint8) for index in range(count)])


def test_a_video_question_is_the_frames_then_the_question_without_image_ids():
    request = GenerationRequest(
        messages=(ChatMessage("user", (VideoPart(_frames(4), (0.5, 1.5, 2.5, 3.5)), TextPart("What changes?"))),),
        max_new_tokens=32,
    )

    call = build_chat_call(request, max_slice_nums=1)

    (message,) = call.msgs
    assert message["role"] == "user"
    *frames, question = message["content"]
    assert question == "What changes?"
    assert [type(frame) for frame in frames] == [Image.Image] * 4
    assert [frame.size for frame in frames] == [(48, 32)] * 4
    assert [frame.getpixel((0, 0)) for frame in frames] == [(0, 0, 0), (10, 10, 10), (20, 20, 20), (30, 30, 30)]
    assert call.kwargs == {
        "max_new_tokens": 32,
        "max_slice_nums": 1,
        "use_image_id": False,
        "sampling": False,
        "num_beams": 1,
        "repetition_penalty": 1.0,
    }
    assert call.num_images == 4


def test_sampling_a_system_prompt_and_an_image_keep_their_meaning():
    request = GenerationRequest(
        messages=(
            ChatMessage("system", (TextPart("Answer briefly."),)),
            ChatMessage("user", (ImagePart(np.zeros((20, 30, 3), dtype=np.uint8)), TextPart("What is it?"))),
            ChatMessage("assistant", (TextPart("A black box."),)),
            ChatMessage("user", (TextPart("Sure?"),)),
        ),
        max_new_tokens=8,
        temperature=0.7,
    )

    call = build_chat_call(request, max_slice_nums=4)

    assert [message["role"] for message in call.msgs] == ["user", "assistant", "user"]
    assert call.msgs[1]["content"] == ["A black box."]
    assert call.kwargs["system_prompt"] == "Answer briefly."
    assert call.kwargs["sampling"] is True and call.kwargs["temperature"] == 0.7
    assert "use_image_id" not in call.kwargs  # images only: the model's own default
    assert call.kwargs["max_slice_nums"] == 4


def test_the_adapter_refuses_to_generate_before_loading():
    adapter = MiniCpmV26Adapter("/nonexistent", strategy=parse_strategy("bf16", "cpu"))

    with pytest.raises(RuntimeError, match="not loaded"):
        adapter.generate(GenerationRequest(messages=(ChatMessage("user", (TextPart("hi"),)),)))
    assert adapter.describe()["adapter"] == "minicpm-v-2.6"
