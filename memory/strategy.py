"""Loading strategies as data: device, dtype, quantization, and the kwargs that follow from them.

No torch at import: the config (and so the ingress) names strategies without loading any.
"""

import dataclasses
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

DType = Literal["float32", "bfloat16", "float16"]
Device = Literal["cuda", "cpu"]
Quantization = Literal["none", "int8", "nf4", "fp8"]
# Every precision a link may load; each engine declares the ones it runs (models.engines: EngineSpec.precisions).
PRECISIONS = ("fp32", "bf16", "fp16", "fp8", "int8", "nf4")


def precision_name(dtype: str, quantization: Quantization) -> str:
    """``('bfloat16', 'none') -> 'bf16'``; ``('bfloat16', 'nf4') -> 'nf4'``."""
    if quantization != "none":
        return quantization
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[dtype]


class StrategyError(ValueError):
    """A strategy or chain that cannot work; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class LoadStrategy:
    """One way to load a model: device, precision and the engine that loads and runs it. ``dtype`` is the compute
    dtype and the dtype of unquantized modules."""

    device: Device
    dtype: DType
    quantization: Quantization = "none"
    engine: str = "transformers"  # a name in models.engines' registry

    @property
    def precision(self) -> str:
        return precision_name(self.dtype, self.quantization)

    @property
    def name(self) -> str:
        """``bf16`` on transformers, ``vllm-bf16`` on vLLM: what the load report and ``/v1/memory`` show."""
        return self.precision if self.engine == "transformers" else f"{self.engine}-{self.precision}"

    @property
    def torch_dtype(self) -> "torch.dtype":
        import torch

        return getattr(torch, self.dtype)

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """What ``from_pretrained`` needs to load this way."""
        kwargs: dict[str, Any] = {"dtype": self.torch_dtype, "device_map": self.device}
        if self.quantization == "int8":
            import transformers

            kwargs["quantization_config"] = transformers.BitsAndBytesConfig(load_in_8bit=True)
        elif self.quantization == "nf4":
            import transformers

            kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=self.torch_dtype,
                bnb_4bit_use_double_quant=False,
            )
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}


def parse_strategy(name: str, device: Device, engine: str = "transformers") -> LoadStrategy:
    """``'bf16'``, ``'fp32'``, ``'fp16'``, ``'fp8'``, ``'int8'``, ``'nf4'`` on a device, for ``engine`` (which of them
    an engine runs is its own: ``EngineSpec.parse_chain`` checks).

    Quantized strategies keep their unquantized modules (embeddings, ``lm_head``,
    norms) and compute in bf16 on both devices: the point of quantizing is the
    smaller footprint, and fp32 embeddings would undo much of it.
    """
    if name not in PRECISIONS:
        raise StrategyError(f"Unknown strategy {name!r}; use one of {', '.join(PRECISIONS)}")
    plain = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    if name in plain:
        return LoadStrategy(device=device, dtype=plain[name], engine=engine)
    return LoadStrategy(device=device, dtype="bfloat16", quantization=name, engine=engine)


def parse_chain(
    names: list[str] | tuple[str, ...], device: Device, engine: str = "transformers"
) -> tuple[LoadStrategy, ...]:
    """A chain of strategy names, tried in order."""
    if not names:
        raise StrategyError(f"The {device} loading chain has no strategy; list at least one, e.g. ['bf16', 'int8', 'nf4']")
    chain = tuple(parse_strategy(name, device, engine) for name in names)
    if len(set(chain)) != len(chain):
        raise StrategyError(f"The {device} loading chain {list(names)} lists a strategy twice")
    return chain


DEFAULT_GPU_CHAIN = ("bf16", "int8", "nf4")
DEFAULT_CPU_CHAIN = ("fp32", "bf16", "int8", "nf4")
