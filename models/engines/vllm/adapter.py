"""One link of the loading chain on vLLM: start vLLM's engine with one precision, sized by our planner.

The chain prices the link first (weights at its precision, plus the smallest KV cache vLLM starts with: see
:func:`models.engines.vllm.memory_plan.engine_overhead_bytes`) and skips it when the budget is short. :meth:`VllmAdapter.load`
turns the budget measured just before into vLLM's own arguments (:func:`models.engines.vllm.memory_plan.plan_vllm_memory`):
``gpu_memory_utilization`` on a GPU, ``kv_cache_memory_bytes`` on the CPU, ``max_model_len`` and
``limit_mm_per_prompt`` from our limits (counts, and the sizes its profiling run builds its dummy media at), ``max_num_seqs`` from ``max_batch_size``; prefix caching on. A start-up
that fails (vLLM's profiling run short of memory, its engine core dying) is shut down and raised as
:class:`VllmStartupError`, a :class:`MemoryError`: the chain records it with the plan's numbers and tries its
next link, down to the transformers engine.
"""

import dataclasses
import logging
import os
import time
from typing import Any, Callable

import transformers

from memory.budget import MemoryBudget
from memory.strategy import LoadStrategy
from models.adapters.base import CheckpointAdapter
from models.cache_dir import default_cache_dir
from models.decoding.grammar import GrammarCompiler
from models.decoding.grammar_server import SchemaCompileLimits
from models.engines.contract import Engine
from models.engines.vllm.async_llm import VllmRuntime
from models.engines.vllm.engine import VllmEngine
from models.engines.vllm.inputs import PromptBuilder
from models.engines.vllm.memory_plan import VllmCompilePlan, VllmMemoryPlan, VllmShape, plan_vllm_compile, plan_vllm_memory

logger = logging.getLogger(__name__)

# vLLM's name for each of our quantized precisions (vLLM quantizes these as it loads the checkpoint).
_VLLM_QUANTIZATION = {"none": None, "fp8": "fp8", "nf4": "bitsandbytes"}


class VllmStartupError(MemoryError):
    """vLLM did not start with this link's plan; the message has the plan. The chain tries its next link."""


@dataclasses.dataclass(frozen=True)
class VllmSettings:
    """What the replica's config and limits give vLLM, beside the memory plan."""

    shape: VllmShape  # bytes a KV token, max_model_len, max_num_seqs
    limit_mm_per_prompt: dict[str, Any]  # per modality: a count, or vLLM's count and dummy-media sizes
    share: float  # of the GPU; 1.0 on the CPU
    num_threads: int
    trust_remote_code: bool = False
    compile: str = "auto"  # the group's vllm_compile: auto, compiled or eager (models.engines.vllm.memory_plan.plan_vllm_compile)
    media_cache_bytes: int = 0  # the group's media_cache_bytes: vLLM's processor cache


class VllmAdapter(CheckpointAdapter):
    def __init__(
        self,
        model_path: str,
        strategy: LoadStrategy,
        *,
        settings: VllmSettings,
        weights_bytes: int,
        budget: Callable[[], MemoryBudget | None],
    ) -> None:
        super().__init__(model_path, strategy)
        self._settings = settings
        self._weights_bytes = weights_bytes
        self._budget = budget
        self._runtime: VllmRuntime | None = None
        self._processor: Any = None
        self.plan: VllmMemoryPlan | None = None
        self.compile_plan: VllmCompilePlan | None = None

    def load(self) -> None:
        budget = self._budget()
        if budget is None:
            raise RuntimeError("vLLM's link was tried before the replica measured its budget")
        self.plan = plan_vllm_memory(budget, device=self._strategy.device, weights_bytes=self._weights_bytes,
                                     shape=self._settings.shape, share=self._settings.share,
                                     processor_cache_bytes=self._settings.media_cache_bytes)
        self.compile_plan = plan_vllm_compile(self._settings.compile, self.plan)
        logger.info("Starting vLLM for %s as %s: %s; %s", self._model_path, self._strategy.name, self.plan.explanation,
                    self.compile_plan.reason)
        # vLLM keeps its compiled graphs here: a restart (or another replica on this node) reuses them.
        os.environ.setdefault("VLLM_CACHE_ROOT", str(default_cache_dir() / "vllm"))
        started = time.perf_counter()
        self._processor = transformers.AutoProcessor.from_pretrained(
            self._model_path, trust_remote_code=self._settings.trust_remote_code
        )
        if self._strategy.device == "cpu":
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
            os.environ.setdefault("OMP_NUM_THREADS", str(self._settings.num_threads))
        try:
            self._runtime = VllmRuntime(self._engine_args(), name=f"vllm-{self._strategy.precision}")
        except Exception as error:
            raise VllmStartupError(
                f"vLLM did not start as {self._strategy.name}: {type(error).__name__}: {str(error).splitlines()[0]} "
                f"({self.plan.explanation})"
            ) from error
        self._load_seconds = time.perf_counter() - started
        logger.info("vLLM started for %s as %s in %.1f s", self._model_path, self._strategy.name, self._load_seconds)

    def _engine_args(self) -> dict[str, Any]:
        shape, strategy = self._settings.shape, self._strategy
        return {
            "model": self._model_path,
            "dtype": strategy.dtype,
            "quantization": _VLLM_QUANTIZATION[strategy.quantization],
            "max_model_len": shape.max_model_len,
            "max_num_seqs": shape.max_num_seqs,
            "max_num_batched_tokens": shape.max_num_batched_tokens,  # what its activation reserve was priced for
            "limit_mm_per_prompt": self._settings.limit_mm_per_prompt,
            "enable_prefix_caching": True,
            # A request's priority (0 interactive, 1 a long video's segment) orders vLLM's queue as ours.
            "scheduling_policy": "priority",
            **self.compile_plan.engine_args(),
            "trust_remote_code": self._settings.trust_remote_code,
            "disable_log_stats": False,
            # Structured output as our grammars compile it: xgrammar, no free whitespace (a model cannot spend its
            # tokens on blanks).
            "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
            **self.plan.engine_args(),
        }

    @property
    def is_loaded(self) -> bool:
        return self._runtime is not None and self._runtime.engine is not None

    def loaded_bytes(self) -> int:
        """What this link holds by plan: the weights at its precision and the KV cache vLLM was given."""
        return self._weights_bytes + (self.plan.kv_cache_bytes if self.plan else 0)

    def own_engine(
        self, *, max_batch_size: int, max_waiting: int, name: str, schema_compile: SchemaCompileLimits, media_cache_bytes: int = 0
    ) -> Engine:
        """``media_cache_bytes`` is already vLLM's processor cache, from the plan (its settings)."""
        if self._runtime is None:
            raise RuntimeError(f"vLLM is not started for {self._model_path}")
        tokenizer = self._processor.tokenizer
        stop_ids = (tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ()
        return VllmEngine(
            self._runtime,
            PromptBuilder(self._processor, vocab_size=len(tokenizer)),
            # Schemas go through our compile server first (its time limit, its refusals kept): vLLM's has no limit.
            grammars=GrammarCompiler(tokenizer, len(tokenizer), stop_ids, limits=schema_compile),
            max_batch_size=max_batch_size,
            max_waiting=max_waiting,
            max_model_len=self._settings.shape.max_model_len,
            kv_bytes_per_token=self._settings.shape.kv_bytes_per_token,
            name=name,
            link=self._strategy.name,
            media_cache_bytes=self.plan.processor_cache_bytes if self.plan else 0,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "model_path": self._model_path,
            "engine": "vllm",
            "device": self._strategy.device,
            "precision": self._strategy.name,
            "loaded": self.is_loaded,
            "load_seconds": self._load_seconds,
            "memory_plan": self.plan.to_dict() if self.plan else None,
            "compile": self.compile_plan.to_dict() if self.compile_plan else None,
        }

    def unload(self) -> None:
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            runtime.shutdown()
