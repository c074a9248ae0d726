"""Load a model adapter through the memory subsystem's strategy chain.

Estimates come from the model's config on the meta device (no weights read);
each strategy gets a fresh adapter so a failed attempt leaves nothing behind.
"""

import logging
from typing import Callable

from memory.budget import MemoryBudget
from memory.chain_estimate import estimate_chain
from memory.chain_load import Loaded, UnusableLinkError, load_through_chain
from memory.estimate import WeightEstimate, load_model_config
from memory.out_of_memory import is_out_of_memory
from memory.strategy import LoadStrategy
from models.adapters.base import CheckpointAdapter
from models.adapters.hf_adapter import HuggingFaceVisionLanguageAdapter

logger = logging.getLogger(__name__)


def load_adapter(
    model_path: str,
    chain: tuple[LoadStrategy, ...],
    *,
    measure_budget: Callable[[LoadStrategy], MemoryBudget],
    oom_retries: int = 1,
    retry_delay_s: float = 2.0,
    make_adapter: Callable[[str, LoadStrategy], CheckpointAdapter] | None = None,
    estimates: dict[LoadStrategy, WeightEstimate] | None = None,
    warm_up: Callable[[CheckpointAdapter, LoadStrategy], object] | None = None,
) -> Loaded[CheckpointAdapter]:
    """Load ``model_path`` with the first strategy of ``chain`` that fits; see :func:`load_through_chain`.

    ``estimates`` saves pricing the chain again when a caller retries (they depend on the config only).
    ``warm_up(adapter, strategy)`` runs a real generation on each loaded link (:mod:`models.engines.warm_up`): a link whose
    warm-up fails is let go and counts as unusable (the chain tries the next); one that runs out of memory there
    counts as out of memory.
    """
    make = make_adapter or (lambda path, strategy: HuggingFaceVisionLanguageAdapter(path, strategy=strategy))

    def load(strategy: LoadStrategy) -> CheckpointAdapter:
        adapter = make(model_path, strategy)
        adapter.load()
        if warm_up is None:
            return adapter
        try:
            warm_up(adapter, strategy)
        except Exception as error:  # noqa: BLE001 - memory errors go on as such, every other one makes the link unusable
            adapter.unload()
            if is_out_of_memory(error):
                raise
            raise UnusableLinkError(
                f"loaded, but its warm-up generation failed: {type(error).__name__}: {error}"
            ) from error
        return adapter

    return load_through_chain(
        model_path,
        chain,
        estimates=estimates if estimates is not None else estimate_chain(load_model_config(model_path), chain),
        measure_budget=measure_budget,
        load=load,
        measure=lambda adapter: adapter.loaded_bytes(),
        oom_retries=oom_retries,
        retry_delay_s=retry_delay_s,
    )
