"""MiniCPM-V 2.6 through its own model code (``trust_remote_code``) and its ``model.chat`` message format.

MiniCPM-V 2.6 is not in transformers: its checkpoint ships ``modeling_minicpmv.py``, so the model's
files must be at hand in ``model.source`` and ``model.trust_remote_code`` must be true. For video it
takes the frames as PIL images followed by the question in one user message, with
``use_image_id=False`` and a small ``max_slice_nums`` (each frame cut into at most that many slices of
64 visual tokens). :func:`build_chat_call` builds exactly that and is tested without the model.
"""

import dataclasses
import logging
import time
from typing import Any, Iterator

import numpy as np
import torch
import transformers
from PIL import Image

from memory.strategy import LoadStrategy
from models.adapters.base import CheckpointAdapter, StopCheck
from models.requests import GenerationRequest, GenerationResult, ImagePart, TextDelta, TextPart, VideoPart

logger = logging.getLogger(__name__)

# Visual tokens per image slice (the resampler's query count) when the config does not say.
_DEFAULT_QUERY_NUM = 64


@dataclasses.dataclass(frozen=True)
class ChatCall:
    """The arguments of ``model.chat`` apart from the model and tokenizer."""

    msgs: list[dict[str, Any]]
    kwargs: dict[str, Any]
    num_images: int


def build_chat_call(request: GenerationRequest, *, max_slice_nums: int) -> ChatCall:
    """Our request -> ``model.chat(image=None, msgs=..., **kwargs)``.

    Each message's parts keep their order; a video's frames become one PIL image each. A system
    message becomes ``system_prompt``. With any video, ``use_image_id`` is off (frame ids would cost
    tokens and mean nothing to the model).
    """
    msgs: list[dict[str, Any]] = []
    system_texts: list[str] = []
    num_images = 0
    has_video = False
    for message in request.messages:
        if message.role == "system":
            system_texts.extend(part.text for part in message.content if isinstance(part, TextPart))
            continue
        content: list[Any] = []
        for part in message.content:
            if isinstance(part, TextPart):
                content.append(part.text)
            elif isinstance(part, ImagePart):
                content.append(Image.fromarray(part.pixels))
                num_images += 1
            elif isinstance(part, VideoPart):
                content.extend(Image.fromarray(np.ascontiguousarray(frame)) for frame in part.frames)
                num_images += len(part.frames)
                has_video = True
            else:
                raise TypeError(f"Unknown content part {type(part).__name__}")
        msgs.append({"role": message.role, "content": content})
    kwargs: dict[str, Any] = {"max_new_tokens": request.max_new_tokens, "max_slice_nums": max_slice_nums}
    if has_video:
        kwargs["use_image_id"] = False
    if request.temperature > 0:
        kwargs.update(sampling=True, temperature=request.temperature)
    else:
        kwargs.update(sampling=False, num_beams=1, repetition_penalty=1.0)
    if system_texts:
        kwargs["system_prompt"] = "\n".join(system_texts)
    return ChatCall(msgs=msgs, kwargs=kwargs, num_images=num_images)


class MiniCpmV26Adapter(CheckpointAdapter):
    """``AutoModel`` + ``AutoTokenizer`` with ``trust_remote_code``, loaded with one :class:`LoadStrategy`."""

    def __init__(self, model_path: str, *, strategy: LoadStrategy, max_slice_nums: int = 2) -> None:
        super().__init__(model_path, strategy)
        self._max_slice_nums = max_slice_nums
        self._tokenizer: transformers.PreTrainedTokenizerBase | None = None

    def load(self) -> None:
        started = time.perf_counter()
        self._tokenizer = transformers.AutoTokenizer.from_pretrained(self._model_path, trust_remote_code=True)
        model = transformers.AutoModel.from_pretrained(
            self._model_path, trust_remote_code=True, attn_implementation="sdpa", **self._strategy.from_pretrained_kwargs()
        )
        self._model = model.eval()
        self._load_seconds = time.perf_counter() - started
        logger.info("Loaded MiniCPM-V 2.6 from %s as %s in %.2f s", self._model_path, self._strategy.name, self._load_seconds)

    def unload(self) -> None:
        self._model = None
        self._tokenizer = None

    def describe(self) -> dict[str, Any]:
        return {
            "model_path": self._model_path,
            "adapter": "minicpm-v-2.6",
            "device": self._strategy.device,
            "precision": self._strategy.name,
            "loaded": self._model is not None,
            "max_slice_nums": self._max_slice_nums,
            "load_seconds": self._load_seconds,
        }

    @torch.inference_mode()
    def generate(self, request: GenerationRequest) -> GenerationResult:
        call = self._call(request)
        answer = self._model.chat(image=None, msgs=call.msgs, tokenizer=self._tokenizer, **call.kwargs)
        return self._result(request, call, answer)

    def stream(self, request: GenerationRequest, should_stop: StopCheck) -> Iterator[TextDelta | GenerationResult]:
        call = self._call(request)
        pieces: list[str] = []
        with torch.inference_mode():
            for piece in self._model.chat(image=None, msgs=call.msgs, tokenizer=self._tokenizer, stream=True, **call.kwargs):
                if should_stop():
                    break
                pieces.append(piece)
                yield TextDelta(piece)
        yield self._result(request, call, "".join(pieces))

    def _call(self, request: GenerationRequest) -> ChatCall:
        if self._model is None or self._tokenizer is None:
            raise RuntimeError(f"Model {self._model_path} is not loaded; call load() first")
        return build_chat_call(request, max_slice_nums=self._max_slice_nums)

    def _result(self, request: GenerationRequest, call: ChatCall, answer: str) -> GenerationResult:
        """Token counts: ``model.chat`` returns text only, so the prompt is counted as its text tokens plus
        the resampler's queries per image slice (one slice per frame: a lower bound when frames are sliced)."""
        completion_tokens = len(self._tokenizer.encode(answer, add_special_tokens=False))
        text = " ".join(part for message in call.msgs for part in message["content"] if isinstance(part, str))
        query_num = getattr(self._model.config, "query_num", _DEFAULT_QUERY_NUM)
        prompt_tokens = len(self._tokenizer.encode(text)) + call.num_images * query_num
        finish_reason = "length" if completion_tokens >= request.max_new_tokens else "stop"
        return GenerationResult(answer, prompt_tokens, completion_tokens, finish_reason)
