"""How much of a GPU a replica needs, from the estimates alone: the smallest share on a grid that holds it.

Ray has no GPU-memory resource; a replica asks for a fraction of a GPU (``num_gpus``), and its budget is that
fraction of the card (``memory.budget``). So the share is sized from what the replica will hold: the chosen
precision's weights, the activation reserve for the largest request the limits allow, and the CUDA context.

Worked example, Qwen2.5-VL-7B on an 80 GiB card with the default 0.05 grid, 0.5 GiB of CUDA context and the
1.30 GiB activation reserve of serve_config.yaml's limits (32 frames of 200,704 pixels, 512 new tokens):
bf16 weights 15.45 GiB need 17.24 GiB, 21.6% of the card, so a share of 0.25 (4 replicas a card); int8
8.75 GiB need 10.54 GiB, 13.2%, so 0.15 (6 a card); nf4 5.81 GiB need 7.60 GiB, 9.5%, so 0.1 (10 a card).
"""

import dataclasses
import fractions
import math
from typing import Any

from memory.probe import format_gib

# Precisions from the most faithful to the least; a quality floor keeps a chain at or above one of them.
PRECISION_ORDER = ("fp32", "bf16", "fp16", "fp8", "int8", "nf4")
DEFAULT_SHARE_GRID = 0.05


class PackingError(ValueError):
    """No precision in the chain fits a whole card; the message lists each one's need."""


def at_or_above(chain: tuple[str, ...], floor: str | None) -> tuple[str, ...]:
    """The chain without the precisions below ``floor`` (all of it when there is no floor)."""
    if floor is None:
        return chain
    limit = PRECISION_ORDER.index(floor)
    return tuple(name for name in chain if PRECISION_ORDER.index(name) <= limit)


def smallest_share(need_bytes: int, total_bytes: int, grid: float) -> float:
    """The smallest multiple of ``grid`` whose part of ``total_bytes`` holds ``need_bytes`` (may exceed 1).

    In exact integer arithmetic (the grid as a fraction), so a share never falls a byte short."""
    step = fractions.Fraction(grid).limit_denominator(10**6)
    steps = -(-need_bytes * step.denominator // (total_bytes * step.numerator))  # ceiling division
    return round(float(max(steps, 1) * step), 6)


@dataclasses.dataclass(frozen=True)
class ShareOption:
    precision: str
    weights_bytes: int
    need_bytes: int
    share: float  # above 1.0: does not fit one card

    @property
    def fits(self) -> bool:
        return self.share <= 1.0

    @property
    def replicas_per_gpu(self) -> int:
        return int(math.floor(1.0 / self.share + 1e-9)) if self.fits else 0


@dataclasses.dataclass(frozen=True)
class SharePlan:
    """Every precision's need on this card, and the one chosen: the chain's first that fits a card."""

    total_bytes: int
    reserve_bytes: int
    context_bytes: int
    grid: float
    options: tuple[ShareOption, ...]

    @property
    def chosen(self) -> ShareOption:
        return next(option for option in self.options if option.fits)

    def explain(self) -> str:
        lines = [
            f"num_gpus auto on a {format_gib(self.total_bytes)} GPU (grid {self.grid:g}; each replica needs its weights "
            f"+ activation reserve {format_gib(self.reserve_bytes)} + CUDA context {format_gib(self.context_bytes)}):"
        ]
        for option in self.options:
            if option.fits:
                verdict = f"share {option.share:g}, {option.replicas_per_gpu} a GPU"
            else:
                verdict = "does not fit one GPU"
            lines.append(
                f"  {option.precision:<5} weights {format_gib(option.weights_bytes)}, needs {format_gib(option.need_bytes)} "
                f"({option.need_bytes / self.total_bytes:.1%}): {verdict}"
            )
        lines.append(f"chosen: {self.chosen.precision} at num_gpus {self.chosen.share:g}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            **{key: value for key, value in dataclasses.asdict(self).items() if key != "options"},
            "options": [{**dataclasses.asdict(option), "replicas_per_gpu": option.replicas_per_gpu} for option in self.options],
            "chosen": self.chosen.precision,
            "num_gpus": self.chosen.share,
        }


def plan_share(
    weights_bytes: dict[str, int], *, total_bytes: int, reserve_bytes: int, context_bytes: int, grid: float = DEFAULT_SHARE_GRID
) -> SharePlan:
    """``weights_bytes``: each precision of the chain, in the chain's order, to its estimated weight bytes."""
    if total_bytes <= 0:
        raise PackingError(f"The GPU's total bytes must be positive, got {total_bytes}")
    if not 0 < grid <= 1:
        raise PackingError(f"The share grid must be in (0, 1], got {grid}")
    options = tuple(
        ShareOption(precision, weights, weights + reserve_bytes + context_bytes,
                    smallest_share(weights + reserve_bytes + context_bytes, total_bytes, grid))
        for precision, weights in weights_bytes.items()
    )
    plan = SharePlan(total_bytes, reserve_bytes, context_bytes, grid, options)
    if not any(option.fits for option in options):
        raise PackingError(
            "No precision in the chain fits one GPU of " + format_gib(total_bytes) + ": "
            + "; ".join(f"{option.precision} needs {format_gib(option.need_bytes)}" for option in options)
            + ". Add a smaller precision to the chain (int8, nf4), lower the request limits, or use a larger GPU."
        )
    return plan
