"""vLLM's async engine behind the engine contract (:mod:`models.engines.contract`), in vLLM's own environment.

- :mod:`.links`: whether vLLM runs here, its links, how each is priced, its adapter;
- :mod:`.memory_plan`: what a replica's budget gives vLLM, in vLLM's own terms, before it starts;
- :mod:`.adapter` starts vLLM for one link; :mod:`.engine` serves the contract on :mod:`.async_llm`'s loop;
  :mod:`.inputs` renders our requests in vLLM's terms; :mod:`.options` lists the decoding options it maps;
- :mod:`.group_fields`: the group settings it adds.

Only this module, :mod:`.group_fields`, :mod:`.options` and :mod:`.torchvision_ops` may be imported where vLLM is
not installed; the rest imports vllm.
"""

import pathlib
from typing import Any

from models.engines.spec import EngineSpec, EnvironmentChoice
from models.engines.vllm.group_fields import VllmGroupFields

# vLLM's environment, built by bin/ensure-vllm-venv beside the project.
DEFAULT_VLLM_PYTHON = pathlib.Path(__file__).resolve().parents[3] / ".venv-vllm" / "bin" / "python"
# A group on vLLM lets vLLM's scheduler hold the waiting requests, as bare vLLM does: vLLM runs up to max_num_seqs
# (our max_batch_size; its own default is 128 on the CPU, 256-1024 on a GPU) within its KV cache and queues the rest
# itself. At 8 and 16, 16 clients waited in our replica, not in vLLM, and got 0.76-0.79x of bare vLLM's requests a
# second (bench/engines.py, ours_vllm_defaults; docs/benchmarks.md).
MAX_BATCH_SIZE = 64
MAX_ONGOING_REQUESTS = 128


def _environment(settings: Any) -> EnvironmentChoice:
    """``vllm_python``, or the default environment where it was built."""
    if settings.vllm_python:
        return EnvironmentChoice(python=settings.vllm_python)
    if DEFAULT_VLLM_PYTHON.is_file():
        return EnvironmentChoice(python=str(DEFAULT_VLLM_PYTHON))
    return EnvironmentChoice(missing=f"{DEFAULT_VLLM_PYTHON} is not there: build it with bin/ensure-vllm-venv, or set "
                                     "vllm_python")


VLLM = EngineSpec(
    name="vllm",
    summary="vLLM's async engine in vLLM's own environment, vllm_python; its links vllm_chain come first, then "
    "chain on transformers",
    # fp8: vLLM quantizes as it loads; no int8 (bitsandbytes' LLM.int8 is transformers')
    precisions=("fp32", "bf16", "fp16", "fp8", "nf4"),
    # On a GPU bf16, then fp8 where the device has it, then bitsandbytes 4-bit; vLLM's CPU build computes in fp32.
    default_chains={"cuda": ("bf16", "fp8", "nf4"), "cpu": ("fp32",)},
    chain_field="vllm_chain",
    max_batch_size=MAX_BATCH_SIZE,
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
    links_module="models.engines.vllm.links",
    group_fields=VllmGroupFields,
    environment=_environment,
)
