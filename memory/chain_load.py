"""Load a model through a chain of strategies, each checked against the budget first.

* A strategy whose estimate exceeds the budget is skipped with its numbers; it
  is not tried and crashed.
* Out of memory while loading: release memory, retry the same strategy up to
  ``oom_retries`` times (another process may be letting go), then the next one.
* Any other error (missing weights, a broken config) fails at once: a
  quantized retry cannot fix it.
* A strategy that loads but cannot serve (``load`` raises :class:`UnusableLinkError`:
  its warm-up generation failed) is recorded as ``unusable`` and the next one is
  tried; a chain whose every link was unusable fails (:class:`ModelLoadError`).
* Every attempt lands in a :class:`LoadReport`; when nothing loads,
  :class:`NothingFitsError` carries it, with what to change.

The loader knows nothing of models: ``load`` turns a strategy into a loaded
object, ``measure`` says how many bytes it holds.
"""

import dataclasses
import functools
import logging
import time
from typing import Any, Callable, Generic, Literal, TypeVar

from memory.budget import MemoryBudget
from memory.cleanup import release_memory
from memory.estimate import WeightEstimate
from memory.host_heap import returning_freed_memory
from memory.out_of_memory import is_out_of_memory
from memory.probe import format_gib
from memory.strategy import LoadStrategy

logger = logging.getLogger(__name__)

Model = TypeVar("Model")
Outcome = Literal["loaded", "skipped", "out_of_memory", "failed", "unusable"]

@dataclasses.dataclass(frozen=True)
class LoadAttempt:
    strategy: str
    device: str
    estimate_bytes: int
    budget_bytes: int
    outcome: Outcome
    reason: str
    seconds: float
    measured_bytes: int | None = None
    freed_bytes: int | None = None
    estimate_parts: dict[str, int] | None = None  # estimate_bytes by what holds it (WeightEstimate.parts)
    reserve: str | None = None  # what the budget kept back for activations, and whose (MemoryBudget.explain)

    def describe(self) -> str:
        figures = f"estimate {format_gib(self.estimate_bytes)} against budget {format_gib(self.budget_bytes)}"
        measured = f", measured {format_gib(self.measured_bytes)}" if self.measured_bytes is not None else ""
        return f"{self.strategy} on {self.device}: {self.outcome} ({figures}{measured}; {self.reason}; {self.seconds:.2f} s)"


@dataclasses.dataclass(frozen=True)
class LoadReport:
    model_path: str
    attempts: tuple[LoadAttempt, ...]

    @property
    def loaded(self) -> LoadAttempt | None:
        return next((attempt for attempt in self.attempts if attempt.outcome == "loaded"), None)

    @property
    def precision(self) -> str | None:
        return self.loaded.strategy if self.loaded else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path,
            "precision": self.precision,
            "attempts": [dataclasses.asdict(attempt) for attempt in self.attempts],
        }


class UnusableLinkError(RuntimeError):
    """A strategy loaded but cannot serve (its warm-up generation failed): the chain tries the next one."""


class ModelLoadError(RuntimeError):
    """A load failed for a reason other than memory; the cause is chained."""

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report


class NothingFitsError(RuntimeError):
    """No strategy in the chain loaded; the message lists every attempt and what to change."""

    def __init__(self, report: LoadReport, budget: MemoryBudget) -> None:
        lines = [f"No loading strategy fits for {report.model_path}. Tried:"]
        lines += [f"  - {attempt.describe()}" for attempt in report.attempts]
        lines.append(f"  {budget.explain()}")
        smallest = min((attempt.estimate_bytes for attempt in report.attempts), default=0)
        lines.append(
            f"To load it, free at least {format_gib(max(0, smallest - budget.weights_bytes))} for this replica: "
            "stop other processes using the device, give the replica a larger share or memory budget, "
            "lower the request limits (they size the activation reserve), or add a smaller strategy to the chain."
        )
        super().__init__("\n".join(lines))
        self.report = report
        self.budget = budget


@dataclasses.dataclass(frozen=True)
class Loaded(Generic[Model]):
    model: Model
    strategy: LoadStrategy
    report: LoadReport


def _attempt(
    strategy: LoadStrategy, estimate: WeightEstimate, budget: MemoryBudget, outcome: Outcome, reason: str, seconds: float,
    **measured: int | None,
) -> LoadAttempt:
    """One attempt's record, with the estimate's parts and the budget's reserve named."""
    return LoadAttempt(
        strategy.name, strategy.device, estimate.total_bytes, budget.weights_bytes, outcome, reason, seconds, **measured,
        estimate_parts=estimate.parts(), reserve=f"{budget.reserve_name} {budget.reserve_bytes} bytes",
    )


def load_through_chain(
    model_path: str,
    chain: tuple[LoadStrategy, ...],
    *,
    estimates: dict[LoadStrategy, WeightEstimate],
    measure_budget: Callable[[LoadStrategy], MemoryBudget],
    load: Callable[[LoadStrategy], Model],
    measure: Callable[[Model], int],
    oom_retries: int = 1,
    retry_delay_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Loaded[Model]:
    """Try each strategy in order; return the first that loads, with the report of all attempts."""
    attempts: list[LoadAttempt] = []
    budget: MemoryBudget | None = None
    for strategy in chain:
        estimate = estimates[strategy].total_bytes
        for attempt_number in range(oom_retries + 1):
            budget = measure_budget(strategy)
            attempt = functools.partial(_attempt, strategy, estimates[strategy], budget)
            if estimate > budget.weights_bytes:
                reason = f"estimate exceeds budget by {format_gib(estimate - budget.weights_bytes)}"
                attempts.append(attempt("skipped", reason, 0.0))
                logger.info("Skipping %s: %s; %s", strategy.name, reason, budget.explain())
                break
            started = time.perf_counter()
            out_of_memory = False
            unusable = None
            try:
                with returning_freed_memory():
                    model = load(strategy)
            except UnusableLinkError as error:
                unusable = error
            except Exception as error:  # noqa: BLE001 - sorted into memory and non-memory below
                seconds = time.perf_counter() - started
                out_of_memory = is_out_of_memory(error)
                cause = (str(error).splitlines() or [type(error).__name__])[0][:800]
                if not out_of_memory:
                    attempts.append(
                        attempt("failed", f"{type(error).__name__}: {error}", seconds)
                    )
                    report = LoadReport(model_path, tuple(attempts))
                    raise ModelLoadError(
                        f"Loading {model_path} as {strategy.name} failed with a non-memory error; "
                        f"a smaller precision cannot fix it: {type(error).__name__}: {error}",
                        report,
                    ) from error
            if unusable is not None:
                reason, unusable = str(unusable)[:800], None  # its traceback's frames may hold the link's tensors
                release_memory()
                attempts.append(
                    attempt("unusable", reason, time.perf_counter() - started)
                )
                logger.warning("%s loaded but cannot serve (%s); next strategy", strategy.name, reason)
                break
            if out_of_memory:
                # Outside the except block: its traceback, and the half-loaded tensors its frames hold, are gone.
                freed = release_memory()
                retrying = attempt_number < oom_retries
                reason = f"out of memory while loading ({cause}); " + ("retrying after cleanup" if retrying else "next strategy")
                attempts.append(
                    attempt("out_of_memory", reason, seconds, freed_bytes=freed.gpu_reserved_freed_bytes + freed.process_rss_freed_bytes)
                )
                logger.warning("%s: %s", strategy.name, reason)
                if retrying:
                    sleep(retry_delay_s)
                continue
            seconds = time.perf_counter() - started
            measured = measure(model)
            attempts.append(attempt("loaded", "fits", seconds, measured_bytes=measured))
            logger.info(
                "Loaded %s as %s in %.2f s: %s measured, %s estimated",
                model_path, strategy.name, seconds, format_gib(measured), format_gib(estimate),
            )
            return Loaded(model=model, strategy=strategy, report=LoadReport(model_path, tuple(attempts)))
    report = LoadReport(model_path, tuple(attempts))
    if budget is None:
        raise ValueError("The loading chain is empty")
    if all(attempt.outcome == "unusable" for attempt in attempts):
        raise ModelLoadError(
            f"Every strategy of {model_path}'s chain loaded but could not serve: "
            + "; ".join(f"{attempt.strategy}: {attempt.reason}" for attempt in attempts),
            report,
        )
    raise NothingFitsError(report, budget)
