"""The replica groups (``gpu_group``, ``cpu_group``, the GPU floor replicas) and their autoscaling."""

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from deployments.config.strict import StrictSettings
from memory.allocator import AllocatorConfigError, refuse_folklore_env
from memory.budget import DEFAULT_CUDA_CONTEXT_BYTES
from memory.packing import at_or_above
from memory.strategy import DEFAULT_CPU_CHAIN, DEFAULT_GPU_CHAIN, LoadStrategy, StrategyError
from models.engines import AUTO, BASE_ENGINE, ENGINE_NAMES, ENGINES, engines_tried

EngineChoice = Literal[(*ENGINE_NAMES, AUTO)]  # type: ignore[valid-type]
# The settings each engine adds to a group (vLLM's vllm_chain, vllm_compile, vllm_python), from the registry.
_ENGINE_FIELDS = tuple(spec.group_fields for spec in ENGINES if spec.group_fields is not None)


def _limits_by_engine(limit: str) -> str:
    return ", ".join(f"{getattr(spec, limit)} on engine {spec.name}" for spec in ENGINES) + \
        f" ({AUTO}: the first engine's)"


class AutoscalingSettings(StrictSettings):
    min_replicas: int = Field(default=1, ge=0, description="Fewest replicas; 0 lets the group scale to zero when idle.")
    max_replicas: int = Field(default=1, ge=1, description="Most replicas the autoscaler may start.")
    target_ongoing_requests: float = Field(default=2.0, gt=0, description="Requests per replica the autoscaler aims for.")
    upscale_delay_s: float = Field(default=5.0, ge=0, description="How long load must stay above target before a scale-out.")
    downscale_delay_s: float = Field(
        default=30.0, ge=0, description="How long load must stay below target before a replica is stopped."
    )
    look_back_period_s: float = Field(
        default=30.0, gt=10.0, description="Window the autoscaler averages over; above the 10 s metrics push period."
    )

    @model_validator(mode="after")
    def _max_above_min(self) -> "AutoscalingSettings":
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be greater than or equal to min_replicas ({self.min_replicas})"
            )
        return self


class _GroupCore(StrictSettings):
    enabled: bool = Field(default=True, description="Deploy this group; at least one group must be enabled.")
    num_cpus: float = Field(default=1.0, gt=0, description="Ray CPUs per replica; also torch's thread count.")
    max_ongoing_requests: int = Field(
        default=BASE_ENGINE.max_ongoing_requests,
        ge=1,
        description=f"Requests one replica holds: its running batch plus its admission queue. Default: "
        f"{_limits_by_engine('max_ongoing_requests')}.",
    )
    max_batch_size: int = Field(
        default=BASE_ENGINE.max_batch_size,
        ge=1,
        description=f"Most requests decoding together in one replica (continuous batching; vLLM's max_num_seqs). "
        f"Default: {_limits_by_engine('max_batch_size')}, never above max_ongoing_requests.",
    )
    max_prefill_tokens: int = Field(
        default=8192,
        ge=1,
        description="Prompt tokens prefilled in one forward pass, over the requests admitted together.",
    )
    max_queued_requests: int = Field(
        default=32,
        ge=1,
        description="Requests Serve queues for the group when every replica is full; past it the router tries the "
        "other group, then answers 503 with Retry-After.",
    )
    oom_retries: int = Field(default=1, ge=0, le=5, description="Retries of a strategy that ran out of memory.")
    load_retry_period_s: float = Field(
        default=10.0, gt=0, description="How often a replica waiting for memory measures again and retries its chain."
    )
    health_check_period_s: float = Field(default=10.0, gt=0, description="Serve restarts a replica after 3 failed checks.")
    warm_up_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="A loaded link serves only after a real generation (a short prompt and, for a vision model, a "
        "small image) answers within this long; one that fails or times out hands over to the next link.",
    )
    media_cache_bytes: int = Field(
        default=256 * 1024**2,
        ge=0,
        description="Encoded media kept per replica by media identity, so a second question about the same image or "
        "video skips its encoding: on the transformers engine the vision tower's outputs and the KV of prompts' "
        "media prefixes (inside the replica's headroom, given back before a request would wait for memory), on vLLM its multimodal processor cache "
        "(mm_processor_cache_gb; on the CPU its two copies come out of the budget). The affinity router sends a "
        "media's next question to the replica that holds it. 0: none.",
    )
    health_min_headroom_bytes: int = Field(
        default=0,
        ge=0,
        description="Fail health (so Serve restarts the replica) when free memory stays under this while requests "
        "keep running out of memory (3 in a minute); 0 turns the check off.",
    )
    env_vars: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment variables for this group's replicas (e.g. HF_HOME, NCCL settings).",
    )
    node_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels a replica's node must carry (Ray's label_selector; nodes get them from "
        "`ray start --labels`), e.g. {\"vd-node\": \"cpu\"} to keep the CPU group off GPU nodes. Empty: any node.",
    )
    min_precision: Literal["fp32", "bf16", "fp16", "fp8", "int8", "nf4"] | None = Field(
        default=None,
        description="A quality floor: the chain's precisions below it (fp32 > bf16 > int8 > nf4) are never loaded; "
        "a replica that fits none of the rest waits for memory instead.",
    )
    autoscaling: AutoscalingSettings = AutoscalingSettings()
    engine: EngineChoice = Field(
        default=BASE_ENGINE.name,
        description="What runs the model: "
        + ", ".join(f"'{spec.name}' ({spec.summary})" for spec in ENGINES)
        + f", or '{AUTO}' (each engine in that order where it runs here and supports the model's architecture).",
    )

    @model_validator(mode="before")
    @classmethod
    def _engine_defaults(cls, data: Any) -> Any:
        """The limits a group leaves unset follow its engine, and a batch unset stays within the requests held."""
        if not isinstance(data, dict):
            return data
        requested = data.get("engine", BASE_ENGINE.name)
        first = engines_tried(requested)[0] if requested in (*ENGINE_NAMES, AUTO) else BASE_ENGINE  # else: refused below
        filled = dict(data)
        filled.setdefault("max_ongoing_requests", first.max_ongoing_requests)
        if "max_batch_size" not in data:
            batch = first.max_batch_size
            held = filled["max_ongoing_requests"]
            filled["max_batch_size"] = min(batch, held) if isinstance(held, int) else batch
        return filled

    @model_validator(mode="after")
    def _floor_leaves_a_chain(self) -> "_GroupCore":
        if self.min_precision is not None and not at_or_above(tuple(self.chain), self.min_precision):
            raise ValueError(
                f"min_precision {self.min_precision!r} leaves nothing of the chain {list(self.chain)}: "
                f"add {self.min_precision} or a precision above it to the chain, or lower the floor"
            )
        return self

    @model_validator(mode="after")
    def _batch_within_ongoing(self) -> "_GroupCore":
        if self.max_batch_size > self.max_ongoing_requests:
            raise ValueError(
                f"max_batch_size ({self.max_batch_size}) must be less than or equal to max_ongoing_requests "
                f"({self.max_ongoing_requests}): a replica never holds more requests than that"
            )
        return self

    @field_validator("env_vars")
    @classmethod
    def _no_folklore(cls, env_vars: dict[str, str]) -> dict[str, str]:
        try:
            refuse_folklore_env(env_vars)
        except AllocatorConfigError as error:
            raise ValueError(str(error)) from error
        return env_vars

    @field_validator("chain", check_fields=False)
    @classmethod
    def _known_strategies(cls, chain: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        # The GPU group declares ``device`` before ``chain``; the CPU group always runs on the CPU.
        try:
            BASE_ENGINE.parse_chain(chain, info.data.get("device", "cpu"))
        except StrategyError as error:
            raise ValueError(str(error)) from error
        return chain

    def strategies(self) -> tuple[LoadStrategy, ...]:
        """The base engine's chain, which ends every replica's: ``chain`` without what ``min_precision`` rules out
        (never empty: checked above). The plan prices shares and reserves on it."""
        return BASE_ENGINE.strategies(self)

    def engine_strategies(self) -> dict[str, tuple[LoadStrategy, ...]]:
        """Every engine's links this group may try, by engine, in order (a replica keeps those that run there)."""
        return {spec.name: spec.strategies(self) for spec in engines_tried(self.engine)}


class _GroupSettings(*_ENGINE_FIELDS, _GroupCore):  # type: ignore[misc]
    """A group's settings: the core above, then what each engine in the registry adds."""


class CpuGroupSettings(_GroupSettings):
    chain: tuple[str, ...] = Field(default=DEFAULT_CPU_CHAIN, description="Strategies tried in order.")
    memory_bytes: int = Field(
        default=8 * 1024**3,
        gt=0,
        description="Host memory this replica may use for weights and activations (capped by what is available).",
    )


class FloorSettings(StrictSettings):
    """GPU replicas at ``min_precision`` that take the GPU group's overflow: more replicas a card, lower precision."""

    max_replicas: int = Field(
        default=0,
        ge=0,
        description="Most floor replicas (0: none). They start from zero when the GPU group is busy and scale back "
        "to zero when it is not.",
    )
    num_gpus: float | Literal["auto"] = Field(
        default="auto",
        description="A floor replica's share of one GPU, or 'auto': the smallest share on num_gpus_grid that holds "
        "min_precision's weights, the activation reserve and the CUDA context.",
    )

    @field_validator("num_gpus", mode="before")
    @classmethod
    def _share_or_auto(cls, value: Any) -> Any:
        return _gpu_share_or_auto(value)


def _gpu_share_or_auto(value: Any) -> Any:
    """One message for both forms (pydantic would report each branch of the union apart)."""
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError("Input should be a share of one GPU, greater than 0 and less than or equal to 1, or 'auto'")
    return float(value)


class GpuGroupSettings(_GroupSettings):
    num_gpus: float | Literal["auto"] = Field(
        default=0.5,
        description="The replica's share of one GPU, or 'auto': the smallest share on num_gpus_grid that holds the "
        "chain's first precision that fits a GPU (weights, activation reserve, CUDA context), planned when the "
        "app is built from gpu_total_bytes or the GPU visible there.",
    )
    gpu_total_bytes: int | None = Field(
        default=None, gt=0, description="The GPU's memory for num_gpus: auto (e.g. 85899345920 for 80 GiB)."
    )
    num_gpus_grid: float = Field(default=0.05, gt=0, le=1, description="Shares num_gpus: auto may pick are multiples of this.")

    @field_validator("num_gpus", mode="before")
    @classmethod
    def _share_or_auto(cls, value: Any) -> Any:
        return _gpu_share_or_auto(value)

    device: Literal["cuda", "cpu"] = Field(
        default="cuda",
        description="'cpu' runs the GPU group's chain on the CPU against the probed GPU budget: for tests and drills.",
    )
    chain: tuple[str, ...] = Field(default=DEFAULT_GPU_CHAIN, description="Strategies tried in order.")
    cuda_context_bytes: int = Field(
        default=DEFAULT_CUDA_CONTEXT_BYTES, ge=0, description="What CUDA's context takes on the card, kept out of the budget."
    )
    floor: FloorSettings = FloorSettings()

    @model_validator(mode="after")
    def _floor_has_a_precision(self) -> "GpuGroupSettings":
        if self.floor.max_replicas == 0:
            return self
        if self.min_precision is None:
            raise ValueError(
                "floor.max_replicas is set but min_precision is not: set gpu_group.min_precision to the precision the "
                "floor replicas load at (e.g. int8)"
            )
        if self.min_precision not in self.chain:
            raise ValueError(
                f"floor replicas load at min_precision {self.min_precision!r}, which is not in the chain "
                f"{list(self.chain)}: add it to gpu_group.chain"
            )
        return self
