"""vLLM's links in a replica: whether vLLM imports here and supports the checkpoint, which links this device runs
(fp8 needs compute capability 8.9), what each holds beside its weights (its smallest KV cache; on the CPU its
processes) and its own activation reserve, and the adapter that starts vLLM for one link. Imports vLLM only inside
:meth:`VllmLinks.problem` and :meth:`VllmLinks.make_adapter`: the project's environment asks it too."""

import json
import logging
import math
import pathlib
import sys

from memory.admission import RequestCostModel
from memory.estimate import compute_dtype_bytes
from memory.strategy import LoadStrategy
from models.engines.spec import LinkContext, LinkPrice
from models.engines.vllm.memory_plan import VllmShape, engine_overhead_bytes, vllm_activation_bytes

logger = logging.getLogger(__name__)


class VllmLinks:
    def problem(self, model_path: str) -> tuple[str | None, str]:
        try:
            import vllm
            from vllm import ModelRegistry
        except ImportError as error:
            return f"vLLM does not import in this environment ({sys.executable}: {error})", "vLLM"
        try:
            architectures = json.loads((pathlib.Path(model_path) / "config.json").read_text()).get("architectures") or []
        except (OSError, ValueError) as error:
            return f"the checkpoint's config.json cannot be read ({error})", f"vLLM {vllm.__version__}"
        supported = set(ModelRegistry.get_supported_archs())
        if not any(architecture in supported for architecture in architectures):
            return (f"vLLM {vllm.__version__} does not support {architectures or 'an unnamed architecture'}",
                    f"vLLM {vllm.__version__}")
        return None, f"vLLM {vllm.__version__} imports here and supports the architecture"

    def usable(self, links: tuple[LoadStrategy, ...]) -> tuple[LoadStrategy, ...]:
        kept = tuple(link for link in links if link.quantization != "fp8" or _fp8_on_device(link.device))
        if len(kept) < len(links):
            logger.info("vLLM's fp8 link is left out: this device has no fp8 (compute capability 8.9 or newer)")
        return kept

    def price(self, link: LoadStrategy, context: LinkContext) -> LinkPrice:
        """The smallest KV cache vLLM starts with (and its processes on the CPU), so a budget too small for it is
        skipped, not tried; and vLLM's own activation peak (:func:`~.memory_plan.vllm_activation_bytes`), not the
        transformers engine's eager-attention reserve."""
        shape = vllm_shape(context, link)
        costs = RequestCostModel.from_config(context.model_config, dtype_bytes=compute_dtype_bytes(link), device=link.device)
        return LinkPrice(
            overhead_bytes=engine_overhead_bytes(link.device, shape),
            reserve=(vllm_activation_bytes(costs, shape, context.largest_request),
                     f"vLLM's activations ({shape.max_num_batched_tokens} batched tokens)"),
        )

    def make_adapter(self, model_path: str, link: LoadStrategy, context: LinkContext, weights_bytes: int):
        from models.engines.vllm.adapter import VllmAdapter, VllmSettings

        settings = context.settings
        return VllmAdapter(
            model_path,
            link,
            settings=VllmSettings(
                shape=vllm_shape(context, link),
                limit_mm_per_prompt=media_limits(context),
                share=context.share,
                num_threads=max(1, int(settings.num_cpus)),
                trust_remote_code=context.trust_remote_code,
                compile=settings.vllm_compile,
                media_cache_bytes=settings.media_cache_bytes,
            ),
            weights_bytes=weights_bytes,
            budget=context.budget,
        )


def media_limits(context: LinkContext) -> dict[str, dict[str, int]]:
    """vLLM's ``limit_mm_per_prompt`` from our limits: how many images and videos a prompt holds, and the largest
    each can be (a square of the pixel budget; a video of ``max_video_frames`` such frames). vLLM's profiling run
    builds its dummy media at these sizes, not at the processor's own bounds (a Qwen2-VL processor allows 12.8
    megapixels a frame and hundreds of frames, which no request here can send)."""
    side = max(28, math.isqrt(context.max_pixels_per_frame))
    media = context.max_media_parts
    return {"image": {"count": media, "width": side, "height": side},
            "video": {"count": media, "num_frames": context.max_video_frames, "width": side, "height": side}}


def vllm_shape(context: LinkContext, link: LoadStrategy) -> VllmShape:
    """The KV cache's shape for one link: its bytes a token, and the sequences our limits allow (the plan's
    ``max_model_len``, ``max_batch_size`` as vLLM's ``max_num_seqs``)."""
    dtype_bytes = 4 if link.dtype == "float32" else 2  # vLLM keeps the KV cache in the model's dtype
    kv_bytes = RequestCostModel.from_config(context.model_config, dtype_bytes=dtype_bytes, device=link.device).kv_bytes_per_token
    text = context.model_config.get_text_config() if hasattr(context.model_config, "get_text_config") else context.model_config
    return VllmShape(kv_bytes_per_token=kv_bytes, max_model_len=context.max_model_len,
                     max_num_seqs=context.settings.max_batch_size, embedding_bytes_per_token=text.hidden_size * dtype_bytes)


def _fp8_on_device(device: str) -> bool:
    """fp8 weights need compute capability 8.9 (Ada, Hopper) or newer; vLLM's CPU build has no fp8 here."""
    if device != "cuda":
        return False
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


LINKS = VllmLinks()
