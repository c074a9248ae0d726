"""The native transformers path: ``AutoModelForImageTextToText`` + ``AutoProcessor``.

Works for every model family whose processor takes images and videos through
its chat template (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision, SmolVLM,
InternVL, MiniCPM-V 4.6). The built-in tiny model is a Qwen2-VL and runs here.
"""

import logging
import threading
import time
from typing import Any, Iterator

import torch
import transformers
from transformers.video_utils import VideoMetadata

from memory.strategy import LoadStrategy
from models.adapters.base import CheckpointAdapter, StopCheck
from models.adapters.chat_template import frame_times, to_template_chat
from models.engines.transformers.hf_batch_model import HfBatchModel, eos_token_ids
from models.errors import InvalidModelInputError, check_prompt_tokens
from models.fault_injection import raise_if_simulated_out_of_memory
from models.requests import GenerationRequest, GenerationResult, TextDelta
from models.weight_cache import WeightCache, load_through_cache

logger = logging.getLogger(__name__)
# Progress bars in a server's logs are noise: one line per load says what happened.
transformers.utils.logging.disable_progress_bar()


class _DropInt8CastNotice(logging.Filter):
    """LLM.int8 computes in fp16 whatever the model dtype, and bitsandbytes logs so on every matmul."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


logging.getLogger("bitsandbytes.autograd._functions").addFilter(_DropInt8CastNotice())


class ModelNotLoadedError(RuntimeError):
    """``generate`` was called before ``load`` (or after ``unload``)."""


class HuggingFaceVisionLanguageAdapter(CheckpointAdapter):
    """Loads a local checkpoint folder with one :class:`LoadStrategy` and answers chat requests with it."""

    def __init__(
        self,
        model_path: str,
        *,
        strategy: LoadStrategy = LoadStrategy(device="cpu", dtype="float32"),
        weight_cache: WeightCache | None = None,
    ) -> None:
        super().__init__(model_path, strategy)
        self._processor: transformers.ProcessorMixin | None = None
        # Only a quantized load is worth keeping: it costs 5-10x reading the bytes (docs/benchmarks.md, loading figures).
        self._weight_cache = weight_cache if strategy.quantization != "none" else None
        self._weights_from = "checkpoint"

    def load(self) -> None:
        started = time.perf_counter()
        self._processor = transformers.AutoProcessor.from_pretrained(self._model_path)
        self._model = self._load_model().eval()
        self._load_seconds = time.perf_counter() - started
        logger.info(
            "Loaded %s (%s) on %s as %s in %.2f s from the %s",
            self._model_path,
            self._model.config.model_type,
            self._strategy.device,
            self._strategy.name,
            self._load_seconds,
            self._weights_from,
        )

    def _load_model(self) -> transformers.PreTrainedModel:
        """From the weight cache when it holds this checkpoint quantized this way; else quantize, and keep it."""
        if self._weight_cache is None:
            return transformers.AutoModelForImageTextToText.from_pretrained(
                self._model_path, **self._strategy.from_pretrained_kwargs()
            )
        model, self._weights_from = load_through_cache(self._model_path, self._strategy, self._weight_cache)
        return model

    def unload(self) -> None:
        self._model = None
        self._processor = None

    def describe(self) -> dict[str, Any]:
        description: dict[str, Any] = {
            "model_path": self._model_path,
            "device": self._strategy.device,
            "precision": self._strategy.name,
            "loaded": self._model is not None,
        }
        if self._model is not None:
            description.update(
                weights_from=self._weights_from,
                model_type=self._model.config.model_type,
                dtype=str(self._model.dtype).removeprefix("torch."),
                parameters=sum(p.numel() for p in self._model.parameters()),
                load_seconds=self._load_seconds,
            )
        return description

    def generate(self, request: GenerationRequest) -> GenerationResult:
        inputs, prompt_tokens = self._prepare(request)
        raise_if_simulated_out_of_memory(request)  # where a full GPU fails: the drills' double, off unless set
        with torch.inference_mode():
            output_ids = self._model.generate(**inputs, **self._generation_kwargs(request))
        return self._result(output_ids, prompt_tokens)

    def stream(self, request: GenerationRequest, should_stop: StopCheck) -> Iterator[TextDelta | GenerationResult]:
        """Token by token: ``generate`` runs in a thread feeding a streamer, and stops at the next token
        once ``should_stop()`` (the client went away)."""
        inputs, prompt_tokens = self._prepare(request)
        raise_if_simulated_out_of_memory(request)
        streamer = transformers.TextIteratorStreamer(
            self._processor.tokenizer, skip_prompt=True, skip_special_tokens=True
        )
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                with torch.inference_mode():
                    outcome["ids"] = self._model.generate(
                        **inputs,
                        **self._generation_kwargs(request),
                        streamer=streamer,
                        stopping_criteria=transformers.StoppingCriteriaList([_StopWhen(should_stop)]),
                    )
            except BaseException as error:  # noqa: BLE001 - handed to the caller below
                outcome["error"] = error
                streamer.end()

        worker = threading.Thread(target=run, name="generate-stream", daemon=True)
        worker.start()
        try:
            for text in streamer:
                if text:
                    yield TextDelta(text)
        finally:
            worker.join()
        if "error" in outcome:
            raise outcome.pop("error")
        yield self._result(outcome["ids"], prompt_tokens)

    def batch_engine(self) -> HfBatchModel:
        """Prefill and decode steps on this adapter's model, for the replica's batch scheduler."""
        if self._model is None or self._processor is None:
            raise ModelNotLoadedError(f"Model {self._model_path} is not loaded; call load() first")
        return HfBatchModel(self._model, self._processor, self._prepare, link=self._strategy.name)

    def _prepare(self, request: GenerationRequest, *, on_device: bool = True) -> tuple[Any, int]:
        if self._model is None or self._processor is None:
            raise ModelNotLoadedError(f"Model {self._model_path} is not loaded; call load() first")
        chat, images, videos = to_template_chat(request.messages)
        prompt = self._processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        processor_kwargs: dict[str, Any] = {"text": [prompt], "return_tensors": "pt"}
        if images:
            processor_kwargs["images"] = images
        if videos:
            processor_kwargs["videos"] = [part.frames for part in videos]
            if all(part.timestamps_s for part in videos):
                # The frames' real times: processors that write them into the prompt (Qwen3-VL) need them.
                processor_kwargs["video_metadata"] = [VideoMetadata(**frame_times(part)) for part in videos]
        try:
            inputs = self._processor(**processor_kwargs)
        except ValueError as error:
            raise InvalidModelInputError(str(error)) from error
        prompt_tokens = int(inputs["input_ids"].shape[1])
        check_prompt_tokens(prompt_tokens, request)
        return (inputs.to(self._model.device) if on_device else inputs), prompt_tokens

    def _generation_kwargs(self, request: GenerationRequest) -> dict[str, Any]:
        sampling = request.temperature > 0
        generation_kwargs: dict[str, Any] = {"max_new_tokens": request.max_new_tokens, "do_sample": sampling}
        if sampling:
            generation_kwargs["temperature"] = request.temperature
            if request.seed is not None:
                torch.manual_seed(request.seed)
        else:
            # The checkpoint's generation_config may carry sampling defaults; greedy ignores them.
            generation_kwargs.update(temperature=None, top_p=None, top_k=None)
        return generation_kwargs

    def _result(self, output_ids: torch.Tensor, prompt_tokens: int) -> GenerationResult:
        new_ids = output_ids[0, prompt_tokens:]
        completion_tokens = int(new_ids.shape[0])
        eos_ids = eos_token_ids(self._model.generation_config)
        finish_reason = "stop" if completion_tokens and int(new_ids[-1]) in eos_ids else "length"
        text = self._processor.decode(new_ids, skip_special_tokens=True)
        return GenerationResult(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=finish_reason,
        )


class _StopWhen(transformers.StoppingCriteria):
    def __init__(self, should_stop: StopCheck) -> None:
        self._should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self._should_stop(), dtype=torch.bool, device=input_ids.device)
