"""Application config: the ``args`` of ``serve_config.yaml``, validated at start-up.

Every model rejects unknown keys, so a typo fails when the application is
built, with the key's path and what to change, not later at request time.
"""

import pathlib
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from memory.allocator import DEFAULT_ALLOCATOR_SETTINGS, AllocatorConfigError, validate_allocator_settings
from memory.strategy import DEFAULT_CPU_CHAIN, StrategyError, parse_chain

_MIB = 1024**2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(_Strict):
    source: str = Field(
        default="tiny",
        description="'tiny' for the built-in tiny Qwen2-VL, or the path of a local checkpoint folder.",
    )
    served_name: str | None = Field(
        default=None,
        min_length=1,
        description="The id clients send as 'model'; defaults to 'tiny-qwen2-vl' or the checkpoint folder's name.",
    )
    @model_validator(mode="after")
    def _source_exists(self) -> "ModelSettings":
        if self.source != "tiny" and not pathlib.Path(self.source).is_dir():
            raise ValueError(
                f"model.source {self.source!r} is neither 'tiny' nor an existing checkpoint folder; "
                "set it to 'tiny' or to a local folder holding config.json and the weights"
            )
        return self

    @property
    def model_id(self) -> str:
        if self.served_name:
            return self.served_name
        if self.source == "tiny":
            return "tiny-qwen2-vl"
        return pathlib.Path(self.source).resolve().name


class LimitsSettings(_Strict):
    max_request_bytes: int = Field(default=32 * _MIB, gt=0, description="Largest request body accepted (413 above).")
    max_content_parts: int = Field(default=16, gt=0, description="Most content parts in one message.")
    max_messages: int = Field(default=64, gt=0, description="Most messages in one request.")
    max_image_pixels: int = Field(
        default=40_000_000, gt=0, description="Largest image (width x height) decoded; checked before decoding."
    )
    max_pixels_per_frame: int = Field(
        default=448 * 448, gt=0, description="Images and video frames are scaled down to at most this many pixels."
    )
    video_frames: int = Field(default=8, gt=0, description="Frames sampled uniformly from each video.")
    default_max_tokens: int = Field(default=64, gt=0, description="New tokens when a request sets none.")
    max_tokens: int = Field(default=512, gt=0, description="Most new tokens a request may ask for.")

    @model_validator(mode="after")
    def _default_within_max(self) -> "LimitsSettings":
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(
                f"limits.default_max_tokens ({self.default_max_tokens}) must be less than or equal to "
                f"limits.max_tokens ({self.max_tokens})"
            )
        return self


class GenerationSettings(_Strict):
    default_temperature: float = Field(
        default=0.0, ge=0.0, le=2.0, description="Temperature when a request sets none; 0 is greedy."
    )


class ReplicaSettings(_Strict):
    num_replicas: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=1.0, gt=0, description="Ray CPUs per replica; also torch's thread count.")
    max_ongoing_requests: int = Field(default=4, ge=1)
    chain: tuple[str, ...] = Field(
        default=DEFAULT_CPU_CHAIN,
        description="Loading strategies tried in order: fp32, bf16, fp16, int8, nf4.",
    )
    memory_bytes: int = Field(
        default=8 * 1024**3,
        gt=0,
        description="Host memory this replica may use for weights and activations (capped by what is available).",
    )
    oom_retries: int = Field(default=1, ge=0, le=5, description="Retries of a strategy that ran out of memory.")

    @field_validator("chain")
    @classmethod
    def _known_strategies(cls, chain: tuple[str, ...]) -> tuple[str, ...]:
        try:
            parse_chain(chain, "cpu")
        except StrategyError as error:
            raise ValueError(str(error)) from error
        return chain


class MemorySettings(_Strict):
    allocator: dict[str, Any] = Field(
        default_factory=lambda: dict(DEFAULT_ALLOCATOR_SETTINGS),
        description="CUDA caching-allocator settings (PYTORCH_ALLOC_CONF keys), set before CUDA starts.",
    )

    @field_validator("allocator")
    @classmethod
    def _known_allocator_keys(cls, allocator: dict[str, Any]) -> dict[str, Any]:
        try:
            validate_allocator_settings(allocator)
        except AllocatorConfigError as error:
            raise ValueError(str(error)) from error
        return allocator


class IngressSettings(_Strict):
    num_replicas: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=0.5, ge=0)
    max_ongoing_requests: int = Field(default=64, ge=1)
    access_log: bool = Field(
        default=False,
        description="Ray Serve's per-request access log lines (cost 1-5 ms a request on 2 cores; see README).",
    )


class AppConfig(_Strict):
    model: ModelSettings = ModelSettings()
    limits: LimitsSettings = LimitsSettings()
    generation: GenerationSettings = GenerationSettings()
    model_replica: ReplicaSettings = ReplicaSettings()
    memory: MemorySettings = MemorySettings()
    ingress: IngressSettings = IngressSettings()


class ConfigError(ValueError):
    """The application args do not validate; the message lists each key and the fix."""


def load_app_config(args: dict[str, Any] | None) -> AppConfig:
    """Validate ``serve_config.yaml`` application args, naming every bad key."""
    try:
        return AppConfig.model_validate(args or {})
    except pydantic.ValidationError as error:
        problems = []
        for item in error.errors():
            location = ".".join(str(part) for part in item["loc"]) or "(top level)"
            if item["type"] == "extra_forbidden":
                problems.append(f"{location}: unknown key; check the spelling against the README's config table")
            else:
                message = item["msg"].removeprefix("Value error, ")
                problems.append(f"{location}: {message} (got {item.get('input')!r})")
        raise ConfigError("Invalid application args in serve_config.yaml:\n  " + "\n  ".join(problems)) from error
