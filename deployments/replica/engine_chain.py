"""Which engines a replica runs, decided in the replica's own environment, and the loading chain that follows.

A group's ``engine`` names the engines its replicas try (:func:`models.engines.engines_tried`): ``auto`` every engine
in the registry's order, a named one that engine and then the base engine (transformers). Each engine that runs
here (:meth:`~models.engines.spec.EngineLinks.problem`) adds its links, in order: a vLLM that cannot start for memory
hands over to the transformers chain, then to the other group, as any link does. The first engine that runs is the
replica's choice; its reason is logged and shown in ``/v1/memory``. No engine is named here.
"""

import dataclasses
from typing import Callable

from memory.chain_estimate import estimate_chain
from memory.estimate import WeightEstimate
from memory.strategy import LoadStrategy
from models.adapters.base import CheckpointAdapter
from models.engines import BASE_ENGINE, engines_tried
from models.engines.spec import EngineSpec, LinkContext, LinkPrice


@dataclasses.dataclass(frozen=True)
class EngineChoice:
    engine: str  # the first engine of the group's that runs here
    reason: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def runnable_engines(requested: str, model_path: str) -> tuple[tuple[EngineSpec, ...], EngineChoice]:
    """The group's engines that run this checkpoint here, in order, and the choice to report."""
    tried = engines_tried(requested)
    runnable, problems, what_runs = [], [], []
    for spec in tried:
        problem, what = spec.links().problem(model_path)
        if problem is None:
            runnable.append(spec)
            what_runs.append(what)
        else:
            problems.append(problem)
    first = runnable[0]  # the base engine always runs
    if len(tried) == 1:
        reason = f"engine: {requested} in the group's config"
    elif first is not BASE_ENGINE:
        reason = f"engine: {requested}; {what_runs[0]}"
    else:
        reason = f"engine: {requested}, but {'; '.join(problems)}: the {first.name} chain serves"
    return tuple(runnable), EngineChoice(first.name, reason)


def choose_engine(requested: str, model_path: str) -> EngineChoice:
    return runnable_engines(requested, model_path)[1]


@dataclasses.dataclass(frozen=True)
class EngineChain:
    """What a replica's loader gets: the engine chosen and why, the chain (every runnable engine's links, in order),
    each link's estimate, and how to make each link's adapter."""

    choice: EngineChoice
    chain: tuple[LoadStrategy, ...]
    estimates: dict[LoadStrategy, WeightEstimate]
    make_adapter: Callable[[str, LoadStrategy], CheckpointAdapter]
    reserves: dict[LoadStrategy, tuple[int, str]]  # a link whose engine prices its own activations; others: the group's


def priced(weights: WeightEstimate, price: LinkPrice) -> WeightEstimate:
    """A link's estimate: its weights and what its engine holds beside them, each part named in the load report."""
    if not price.overhead_bytes:
        return weights
    return dataclasses.replace(
        weights, total_bytes=weights.total_bytes + sum(price.overhead_bytes.values()),
        overhead_bytes=tuple(price.overhead_bytes.items()),
    )


def engine_chain(model_path: str, context: LinkContext) -> EngineChain:
    runnable, choice = runnable_engines(context.settings.engine, model_path)
    owner: dict[LoadStrategy, EngineSpec] = {}
    for spec in runnable:
        for link in spec.links().usable(spec.strategies(context.settings)):
            owner[link] = spec
    chain = tuple(owner)
    weights = estimate_chain(context.model_config, chain)  # one meta-device model per dtype, for every engine's links
    estimates, reserves = {}, {}
    for link, spec in owner.items():
        price = spec.links().price(link, context)
        estimates[link] = priced(weights[link], price)
        if price.reserve is not None:
            reserves[link] = price.reserve

    def make_adapter(path: str, link: LoadStrategy) -> CheckpointAdapter:
        return owner[link].links().make_adapter(path, link, context, weights[link].total_bytes)

    return EngineChain(choice=choice, chain=chain, estimates=estimates, make_adapter=make_adapter, reserves=reserves)
