"""Estimate a model's bytes per precision from its config alone, before loading it.

The model is built on the meta device (shapes, no storage, no weights read),
then every parameter and buffer is priced at the precision a strategy would
load it in. Quantization is priced the way transformers and bitsandbytes
actually store it:

* only plain ``nn.Linear`` (and GPT-2 ``Conv1D``) layers are quantized, the
  vision tower's included; embeddings, norms, convolutions, ``lm_head``, tied
  weights and the model's ``_keep_in_fp32_modules`` stay unquantized, at the
  load dtype (transformers' own ``get_modules_to_not_convert`` decides, so the
  estimate follows the same rules as the loader);
* int8 (LLM.int8): 1 byte a weight, plus one fp32 scale per output row (``SCB``);
* fp8 (vLLM's, quantized as it loads): 1 byte a weight, plus one fp32 scale per layer;
* nf4: half a byte a weight, plus one fp32 ``absmax`` per 64 weights and a
  16-entry fp32 code table per layer (``get_memory_footprint`` misses these);
* biases of quantized layers stay at the load dtype.

:func:`measure_model_bytes` counts the same things on a loaded model, so the
two can be compared (``bench/estimate_accuracy.py``).

The activation reserve is the largest request the limits allow
(:mod:`memory.largest_request`) priced by admission's cost model (:mod:`memory.admission`).
"""

import dataclasses
import json
import logging
import math
import pathlib
from typing import Any

import torch
import transformers
from torch import nn

from memory.admission import RequestCostModel, RequestSize
from memory.strategy import LoadStrategy, Quantization, precision_name

logger = logging.getLogger(__name__)


NF4_BLOCK_SIZE = 64
NF4_CODE_ENTRIES = 16
FP32_BYTES = 4



class ModelConfigError(ValueError):
    """The model path or its config cannot be used; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class WeightEstimate:
    """Bytes one precision would take for a model's parameters, buffers and quantization state."""

    dtype: str
    quantization: Quantization
    total_bytes: int
    parameter_bytes: int
    buffer_bytes: int
    quantization_state_bytes: int
    quantized_parameters: int
    unquantized_parameters: int
    # What an engine holds beside the weights, counted in total_bytes (a vLLM link: its smallest KV cache, its
    # processes), by name.
    overhead_bytes: tuple[tuple[str, int], ...] = ()

    @property
    def precision(self) -> str:
        return precision_name(self.dtype, self.quantization)

    def parts(self) -> dict[str, int]:
        """``total_bytes`` by what holds it: the weights, then any engine overhead."""
        overhead = dict(self.overhead_bytes)
        return {"weights_bytes": self.total_bytes - sum(overhead.values()), **overhead}

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "precision": self.precision}


def load_model_config(model_path: str | pathlib.Path, *, trust_remote_code: bool = False) -> transformers.PretrainedConfig:
    """Read ``config.json`` from a local folder, with errors that say what to change.

    A config whose class lives in the checkpoint's own Python files (``auto_map``, as MiniCPM-V 2.6's)
    is read only with ``trust_remote_code``; that code runs in this process.
    """
    path = pathlib.Path(model_path)
    if not path.exists():
        raise ModelConfigError(f"Model path {str(path)!r} does not exist; point model.source at a local checkpoint folder")
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise ModelConfigError(f"{str(path)!r} has no config.json; a Hugging Face checkpoint folder holds one")
    try:
        raw = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelConfigError(f"{str(config_file)!r} is not valid JSON: {error}") from error
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise ModelConfigError(
            f"{str(config_file)!r} is not a model config (no 'model_type'); is this the right folder?"
        )
    if raw.get("auto_map") and raw["model_type"] not in transformers.CONFIG_MAPPING and not trust_remote_code:
        raise ModelConfigError(
            f"{str(path)!r} is a {raw['model_type']!r} model whose code ships with the checkpoint (auto_map); "
            "set model.trust_remote_code: true (python -m memory plan: --trust-remote-code) to run that code, "
            "after reading it"
        )
    try:
        return transformers.AutoConfig.from_pretrained(
            path if path.is_dir() else path.parent, trust_remote_code=trust_remote_code
        )
    except (ValueError, KeyError, OSError) as error:
        raise ModelConfigError(f"transformers cannot read the config in {str(path)!r}: {error}") from error


def build_meta_model(config: transformers.PretrainedConfig, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The model's modules with shapes and dtypes but no storage: nothing is allocated or read."""
    for auto_class in (transformers.AutoModelForImageTextToText, transformers.AutoModelForCausalLM):
        try:
            with torch.device("meta"):
                return auto_class.from_config(config, dtype=dtype)
        except ValueError:
            continue
    if "AutoModel" in (getattr(config, "auto_map", None) or {}):
        # Checkpoint code (MiniCPM-V 2.6): its config was read with trust_remote_code, so its model class may be too.
        with torch.device("meta"):
            return transformers.AutoModel.from_config(config, dtype=dtype, trust_remote_code=True)
    raise ModelConfigError(
        f"model_type {config.model_type!r} is neither an image-text-to-text nor a causal LM model in transformers "
        f"{transformers.__version__}"
    )


def unquantized_module_names(model: nn.Module, skip_modules: tuple[str, ...] = ()) -> list[str]:
    """The module name patterns bitsandbytes leaves alone, as transformers computes them."""
    from transformers.quantizers.base import HfQuantizer

    return HfQuantizer.get_modules_to_not_convert(
        model, list(skip_modules) or None, getattr(model, "_keep_in_fp32_modules", None), add_default_skips=True
    )


def estimate_weights(
    meta_model: nn.Module,
    dtype: torch.dtype,
    quantization: Quantization = "none",
    skip_modules: tuple[str, ...] = (),
) -> WeightEstimate:
    """Price every parameter and buffer of a meta-device model at one precision.

    ``meta_model`` must be built with the same ``dtype`` the load will use, so
    buffers and ``_keep_in_fp32_modules`` carry the dtypes the load gives them.
    """
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.quantizers_utils import should_convert_module

    not_converted = unquantized_module_names(meta_model, skip_modules) if quantization != "none" else []
    quantized_weights: set[int] = set()
    parameter_bytes = 0
    state_bytes = 0
    quantized_count = 0
    if quantization != "none":
        for name, module in meta_model.named_modules():
            if not (type(module) is nn.Linear or isinstance(module, Conv1D)):
                continue
            if not should_convert_module(name, not_converted):
                continue
            weight = module.weight
            quantized_weights.add(id(weight))
            numel = weight.numel()
            out_features = weight.shape[1] if isinstance(module, Conv1D) else weight.shape[0]
            quantized_count += numel
            if quantization == "int8":
                parameter_bytes += numel
                state_bytes += out_features * FP32_BYTES
            elif quantization == "fp8":
                parameter_bytes += numel
                state_bytes += FP32_BYTES
            else:
                parameter_bytes += math.ceil(numel / 2)
                state_bytes += math.ceil(numel / NF4_BLOCK_SIZE) * FP32_BYTES + NF4_CODE_ENTRIES * FP32_BYTES
    unquantized_count = 0
    for parameter in _unique_tensors(meta_model.parameters()):
        if id(parameter) in quantized_weights:
            continue
        unquantized_count += parameter.numel()
        parameter_bytes += parameter.numel() * parameter.element_size()
    buffer_bytes = sum(buffer.numel() * buffer.element_size() for buffer in _unique_tensors(meta_model.buffers()))
    return WeightEstimate(
        dtype=str(dtype).removeprefix("torch."),
        quantization=quantization,
        total_bytes=parameter_bytes + buffer_bytes + state_bytes,
        parameter_bytes=parameter_bytes,
        buffer_bytes=buffer_bytes,
        quantization_state_bytes=state_bytes,
        quantized_parameters=quantized_count,
        unquantized_parameters=unquantized_count,
    )


def measure_model_bytes(model: nn.Module) -> int:
    """Bytes a loaded model holds: parameters, buffers and bitsandbytes' side tensors, each once."""
    seen: set[tuple[int, int]] = set()
    total = 0

    def count(tensor: torch.Tensor | None) -> None:
        nonlocal total
        if tensor is None or not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            return
        seen.add(key)
        total += tensor.numel() * tensor.element_size()

    for parameter in model.parameters():
        count(parameter)
        count(getattr(parameter, "SCB", None))  # int8 row scales
        quant_state = getattr(parameter, "quant_state", None)  # nf4 absmax and code
        while quant_state is not None:
            count(getattr(quant_state, "absmax", None))
            count(getattr(quant_state, "code", None))
            count(getattr(quant_state, "offset", None))
            quant_state = getattr(quant_state, "state2", None)
    for module in model.modules():
        state = getattr(module, "state", None)
        count(getattr(state, "SCB", None))
    for buffer in model.buffers():
        count(buffer)
    return total


def activation_reserve_bytes(config: transformers.PretrainedConfig, request: RequestSize, strategy: LoadStrategy) -> int:
    """What ``request`` costs beside the weights of a model loaded as ``strategy``: admission's own price
    (:meth:`memory.admission.RequestCostModel.price`, KV cache, vision tower, prefill and inputs) on the
    strategy's device, with its compute dtype's KV cache. One pricing: the loader reserves what admission
    will charge."""
    costs = RequestCostModel.from_config(config, dtype_bytes=compute_dtype_bytes(strategy), device=strategy.device)
    return costs.price(request).total_bytes


def compute_dtype_bytes(strategy: LoadStrategy) -> int:
    """Bytes of one value at the strategy's compute dtype (the KV cache's, and the activations')."""
    return 4 if strategy.dtype == "float32" else 2


def _unique_tensors(tensors) -> list[torch.Tensor]:
    seen: set[int] = set()
    unique = []
    for tensor in tensors:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            unique.append(tensor)
    return unique
