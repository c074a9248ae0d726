"""Which adapter serves a checkpoint: named in config, or chosen from its ``config.json`` ``model_type``.

- ``transformers``: the native path (``AutoModelForImageTextToText`` + ``AutoProcessor``, video in the
  chat template) for every ``model_type`` transformers maps to an image-text-to-text model: Qwen2-VL,
  Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision, SmolVLM, InternVL, MiniCPM-V 4.6 and more;
- ``minicpm-v-2.6``: MiniCPM-V 2.6, whose model code ships with the checkpoint (``model_type``
  ``minicpmv``); it needs ``trust_remote_code``.
"""

import json
import pathlib
from typing import TYPE_CHECKING, Callable

from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from memory.strategy import LoadStrategy
from models.adapters.base import CheckpointAdapter

if TYPE_CHECKING:
    from models.weight_cache import WeightCache

from models.adapters.names import MINICPM_V_2_6, TRANSFORMERS, AdapterName

_REMOTE_CODE_ADAPTERS = {"minicpmv": MINICPM_V_2_6}


class AdapterChoiceError(ValueError):
    """No adapter fits the checkpoint, or the one named needs a setting that is off; the message says which."""


def native_model_types() -> list[str]:
    return sorted(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def choose_adapter(model_path: str | pathlib.Path, requested: AdapterName, *, trust_remote_code: bool) -> str:
    """The adapter for ``model_path``; checks what the checkpoint needs before anything is loaded."""
    model_type = _model_type(pathlib.Path(model_path))
    if requested == "auto":
        if model_type in _REMOTE_CODE_ADAPTERS:
            chosen = _REMOTE_CODE_ADAPTERS[model_type]
        elif model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
            chosen = TRANSFORMERS
        else:
            raise AdapterChoiceError(
                f"model_type {model_type!r} of {str(model_path)!r} has no adapter here: transformers serves "
                f"{', '.join(native_model_types()[:12])}, ... natively, and model.adapter 'minicpm-v-2.6' serves "
                "'minicpmv'; set model.adapter explicitly if the checkpoint is one of these under another name"
            )
    else:
        chosen = requested
    if chosen == MINICPM_V_2_6 and not trust_remote_code:
        raise AdapterChoiceError(
            f"{str(model_path)!r} is MiniCPM-V 2.6 (model_type {model_type!r}), whose model code ships with the "
            "checkpoint; set model.trust_remote_code: true to run that code, after reading it"
        )
    return chosen


def adapter_factory(
    name: str, *, max_slice_nums: int = 1, weight_cache: "WeightCache | None" = None
) -> Callable[[str, LoadStrategy], CheckpointAdapter]:
    """``make(model_path, strategy)`` for the chosen adapter (imported lazily: remote code only when asked).

    ``weight_cache`` keeps quantized loads of the native transformers path (MiniCPM-V 2.6's remote code is
    loaded as it ships)."""
    if name == MINICPM_V_2_6:
        from models.adapters.minicpm_v_2_6 import MiniCpmV26Adapter

        return lambda path, strategy: MiniCpmV26Adapter(path, strategy=strategy, max_slice_nums=max_slice_nums)
    from models.adapters.hf_adapter import HuggingFaceVisionLanguageAdapter

    return lambda path, strategy: HuggingFaceVisionLanguageAdapter(path, strategy=strategy, weight_cache=weight_cache)


def _model_type(path: pathlib.Path) -> str:
    config_file = path / "config.json"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise AdapterChoiceError(f"Cannot read model_type from {str(config_file)!r}: {error}") from error
    if not isinstance(model_type, str):
        raise AdapterChoiceError(f"{str(config_file)!r} has no model_type; is this a Hugging Face checkpoint folder?")
    return model_type
