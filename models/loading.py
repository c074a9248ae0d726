"""Load a model adapter through the memory subsystem's strategy chain.

Estimates come from the model's config on the meta device (no weights read);
each strategy gets a fresh adapter so a failed attempt leaves nothing behind.
"""

import logging
from typing import Callable

from memory.budget import MemoryBudget
from memory.estimate import WeightEstimate, load_model_config
from memory.loader import Loaded, load_through_chain
from memory.plan import estimate_chain
from memory.strategy import LoadStrategy
from models.base import CheckpointAdapter
from models.hf_adapter import HuggingFaceVisionLanguageAdapter

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
) -> Loaded[CheckpointAdapter]:
    """Load ``model_path`` with the first strategy of ``chain`` that fits; see :func:`load_through_chain`.

    ``estimates`` saves pricing the chain again when a caller retries (they depend on the config only).
    """
    make = make_adapter or (lambda path, strategy: HuggingFaceVisionLanguageAdapter(path, strategy=strategy))

    def load(strategy: LoadStrategy) -> CheckpointAdapter:
        adapter = make(model_path, strategy)
        adapter.load()
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
