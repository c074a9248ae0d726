"""Price a whole loading chain from a model's config, before anything is loaded."""

import transformers

from memory.estimate import WeightEstimate, build_meta_model, estimate_weights
from memory.strategy import LoadStrategy


def estimate_chain(
    config: transformers.PretrainedConfig, chain: tuple[LoadStrategy, ...]
) -> dict[LoadStrategy, WeightEstimate]:
    """Each strategy's weight bytes; one meta-device model per dtype, no weights read."""
    meta_models = {}
    estimates = {}
    for strategy in chain:
        if strategy.dtype not in meta_models:
            meta_models[strategy.dtype] = build_meta_model(config, strategy.torch_dtype)
        estimates[strategy] = estimate_weights(meta_models[strategy.dtype], strategy.torch_dtype, strategy.quantization)
    return estimates
