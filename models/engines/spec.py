"""What an engine is to the rest of the project, in two parts.

- :class:`EngineSpec`, torch-free: what a group's config and the app builder know of an engine (its name, the
  precisions it loads, its default links on each device, its default limits, the group settings it adds, the Python
  its replicas run in). The config and the ingress import it.
- :class:`EngineLinks`, imported only in a replica (:meth:`EngineSpec.links`): whether the engine runs here, which of
  its links this device runs, what each link holds beside its weights, and how to make a link's adapter.

The replica, the planner and the app builder iterate over the registry (:mod:`models.engines`) and name no engine.
"""

import dataclasses
import importlib
from typing import Any, Callable, Protocol

import pydantic

from memory.admission import RequestSize
from memory.budget import MemoryBudget
from memory.packing import at_or_above
from memory.strategy import Device, LoadStrategy, StrategyError, parse_chain


@dataclasses.dataclass(frozen=True)
class EnvironmentChoice:
    """The Python a group's replicas run in for this engine (``None``: the project's own), or why it is missing."""

    python: str | None = None
    missing: str | None = None  # the environment the engine needs is not there: what to do about it


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    name: str
    summary: str  # for the config's description of ``engine``
    precisions: tuple[str, ...]  # what its links may load (memory.strategy's precision names)
    default_chains: dict[str, tuple[str, ...]]  # by device, where the group names no links of its own
    chain_field: str  # the group setting that lists its links ("chain", "vllm_chain")
    max_batch_size: int  # the group's defaults on this engine
    max_ongoing_requests: int
    links_module: str  # the module whose LINKS is this engine's EngineLinks: imported only in a replica
    group_fields: type[pydantic.BaseModel] | None = None  # the group settings this engine adds, if any
    environment: Callable[[Any], EnvironmentChoice] = lambda settings: EnvironmentChoice()

    def parse_chain(self, names: tuple[str, ...] | list[str], device: Device) -> tuple[LoadStrategy, ...]:
        """Links named in a config; :class:`~memory.strategy.StrategyError` names a precision this engine lacks."""
        for name in names:
            if name not in self.precisions:
                raise StrategyError(
                    f"Unknown strategy {name!r} for the {self.name} engine; use one of {', '.join(self.precisions)}"
                )
        return parse_chain(names, device, self.name)

    def strategies(self, settings: Any) -> tuple[LoadStrategy, ...]:
        """The group's links on this engine: its ``chain_field`` (or the device's default) without what
        ``min_precision`` rules out. Empty when the floor rules out all of them."""
        device = getattr(settings, "device", "cpu")
        names = getattr(settings, self.chain_field, None) or self.default_chains[device]
        kept = at_or_above(tuple(names), settings.min_precision)
        return self.parse_chain(kept, device) if kept else ()

    def links(self) -> "EngineLinks":
        return importlib.import_module(self.links_module).LINKS


@dataclasses.dataclass(frozen=True)
class LinkContext:
    """What a replica knows that an engine's links need: the model, the group's settings, the plan's limits."""

    model_config: Any
    settings: Any  # the group's resolved settings; each engine reads its own fields
    max_model_len: int
    largest_request: RequestSize
    max_media_parts: int
    trust_remote_code: bool
    adapter_family: str  # models.adapters.names: which adapter the transformers engine loads with
    max_slice_nums: int  # MiniCPM-V 2.6's image slices
    weight_cache: Any  # models.weight_cache.WeightCache or None
    share: float  # of a GPU; 1.0 on the CPU
    budget: Callable[[], MemoryBudget | None]  # the replica's budget, measured just before a link loads
    max_video_frames: int = 32  # limits.max_video_frames: the most frames one video of a request holds
    max_pixels_per_frame: int = 448 * 448  # limits.max_pixels_per_frame: every image and frame is scaled to at most this


@dataclasses.dataclass(frozen=True)
class LinkPrice:
    """What a link holds beside its weights (named parts, in the chain's estimate), and the activation reserve its
    budget keeps back when the engine prices its own (``None``: the group's, priced for the transformers engine)."""

    overhead_bytes: dict[str, int] = dataclasses.field(default_factory=dict)
    reserve: tuple[int, str] | None = None  # (bytes, whose)


class EngineLinks(Protocol):
    def problem(self, model_path: str) -> tuple[str | None, str]:
        """``(why this engine cannot run this checkpoint here, or None; what runs, e.g. "vLLM 0.32.0 ...")``."""

    def usable(self, links: tuple[LoadStrategy, ...]) -> tuple[LoadStrategy, ...]:
        """The links this device runs (logging what it leaves out)."""

    def price(self, link: LoadStrategy, context: LinkContext) -> LinkPrice: ...

    def make_adapter(self, model_path: str, link: LoadStrategy, context: LinkContext, weights_bytes: int) -> Any:
        """A fresh :class:`~models.adapters.base.CheckpointAdapter` for ``link``, not yet loaded."""
