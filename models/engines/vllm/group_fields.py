"""The group settings a group on vLLM adds (``vllm_chain``, ``vllm_compile``, ``vllm_python``): torch-free, composed
into every group's settings by ``deployments/config/groups.py`` through the registry."""

from typing import Literal

import pydantic
from pydantic import Field, ValidationInfo, field_validator

from memory.strategy import StrategyError


class VllmGroupFields(pydantic.BaseModel):
    vllm_chain: tuple[str, ...] | None = Field(
        default=None,
        description="vLLM's links, tried before chain: from fp32, bf16, fp16, fp8, nf4. Default: bf16, fp8 (on "
        "devices that have it), nf4 on a GPU; fp32 on the CPU.",
    )
    vllm_compile: Literal["auto", "compiled", "eager"] = Field(
        default="auto",
        description="vLLM compiled (torch.compile; on a GPU also CUDA graphs) or eager. 'auto': the planner decides, "
        "and /v1/memory says why: on the CPU compiled, its compilation cached under the model cache so later "
        "starts reuse it; on a GPU compiled with CUDA graphs where the KV cache above its minimum holds their "
        "reserve, eager where it does not (docs/engines.md has the costs measured).",
    )
    vllm_python: str | None = Field(
        default=None,
        description="The python of vLLM's environment, for the replicas of a group on engine vllm or auto (Ray's "
        "runtime_env py_executable). Default: .venv-vllm/bin/python beside the project, which bin/ensure-vllm-venv "
        "builds; on a cluster, the path in the worker image.",
    )

    @field_validator("vllm_chain")
    @classmethod
    def _known_vllm_strategies(cls, chain: tuple[str, ...] | None, info: ValidationInfo) -> tuple[str, ...] | None:
        from models.engines.vllm import VLLM  # this module is imported while VLLM is defined

        if chain is not None:
            try:
                VLLM.parse_chain(chain, info.data.get("device", "cpu"))
            except StrategyError as error:
                raise ValueError(str(error)) from error
        return chain
