"""Application config: the ``args`` of ``serve_config.yaml`` as written, validated at start-up.

What the config comes to on a cluster (``num_gpus: auto`` planned, chains parsed, the floor replicas'
settings built, the adapter chosen) is the resolved plan, :mod:`deployments.plan`. No validator here
imports torch or transformers: the ingress validates this config too.

Every model rejects unknown keys, so a typo fails when the application is
built, with the key's path and what to change, not later at request time.
"""

import ipaddress
import pathlib
import urllib.parse
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from memory.allocator import (
    DEFAULT_ALLOCATOR_SETTINGS,
    AllocatorConfigError,
    refuse_folklore_env,
    validate_allocator_settings,
)
from memory.budget import DEFAULT_CUDA_CONTEXT_BYTES
from memory.packing import at_or_above
from memory.strategy import DEFAULT_CPU_CHAIN, DEFAULT_GPU_CHAIN, LoadStrategy, StrategyError, parse_chain
from models.adapter_names import AdapterName
from models.decode_budget import DecodeBudget
from models.video import VideoLimits

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
    adapter: AdapterName = Field(
        default="auto",
        description="'transformers' (native path), 'minicpm-v-2.6' (its remote code), or 'auto' to choose by model_type.",
    )
    trust_remote_code: bool = Field(
        default=False, description="Run Python code shipped in the checkpoint (MiniCPM-V 2.6 needs it); read it first."
    )
    max_slice_nums: int = Field(default=2, ge=1, le=9, description="MiniCPM-V 2.6: most slices per image or frame.")
    weight_cache_dir: str | None = Field(
        default=None,
        description="Where quantized (int8, nf4) loads are kept for the next load of the same checkpoint and strategy; "
        "default: weights/ under $VIDEO_DETECTIVE_CACHE (~/.cache/video-detective). A local disk on each node.",
    )
    weight_cache_bytes: int = Field(
        default=64 * 1024**3, ge=0, description="The weight cache's bound (least recently used entries go first); 0 turns it off."
    )
    @model_validator(mode="after")
    def _source_exists(self) -> "ModelSettings":
        if self.source != "tiny" and not pathlib.Path(self.source).is_dir():
            raise ValueError(
                f"model.source {self.source!r} is neither 'tiny' nor an existing checkpoint folder; "
                "set it to 'tiny' or to a local folder holding config.json and the weights"
            )
        # Which adapter serves the checkpoint is read from its config.json when the app is resolved
        # (deployments.plan.resolve_app): no validator here imports transformers.
        if self.source == "tiny" and self.adapter == "minicpm-v-2.6":
            raise ValueError("model.adapter 'minicpm-v-2.6' needs a MiniCPM-V 2.6 checkpoint in model.source, not 'tiny'")
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
    max_image_bytes: int = Field(
        default=16 * _MIB, gt=0, description="Largest image, inline or an uploaded file, in bytes (413 above; a file is refused unread)."
    )
    max_pixels_per_frame: int = Field(
        default=448 * 448, gt=0, description="Images and video frames are scaled down to at most this many pixels."
    )
    video_frames: int = Field(default=8, gt=0, description="Frames sampled uniformly from a video when a request sets none.")
    max_video_frames: int = Field(default=32, gt=0, description="Most frames one request may ask for (frames or fps).")
    max_video_fps: float = Field(default=30.0, gt=0, description="Highest sampling rate /v1/analyze accepts.")
    max_video_duration_s: float = Field(default=3600.0, gt=0, description="Longest video accepted (413 above).")
    max_video_source_pixels: int = Field(
        default=8192 * 4320,
        gt=0,
        description="Largest stored frame (width x height) of a video, checked from its header before decoding (413).",
    )
    max_decoded_frames: int = Field(
        default=4096,
        gt=0,
        description="Most frames the decoder may produce for one request, across its videos, counting every frame "
        "decoded to reach a sampled one (the frames behind a far keyframe). A target the request's share cannot "
        "reach is taken at the nearest decodable frame (the answer's frames.substituted says how many); a request "
        "that cannot afford one frame a target is refused (413).",
    )
    max_decoded_pixels: int = Field(
        default=1_000_000_000,
        gt=0,
        description="Most pixels (at stored size) the decoder may produce for one request, counted as "
        "max_decoded_frames is: what decoding costs in CPU (about 1.6 ns a pixel here: 1.6 s for the default).",
    )
    max_upload_bytes: int = Field(
        default=256 * _MIB, gt=0, description="Largest /v1/analyze upload, counted while it arrives (413 above)."
    )
    max_question_bytes: int = Field(default=16 * 1024, gt=0, description="Largest /v1/analyze question (413 above).")
    max_prompt_tokens: int = Field(
        default=8192,
        gt=0,
        description="Most prompt tokens (text plus image and video tokens) one request may use (413). Every replica "
        "keeps memory free for the largest request the limits allow, this long prompt included, as admission prices "
        "it (on the CPU, attention over the prompt grows with its square).",
    )
    max_media_parts: int = Field(
        default=32, gt=0, description="Most images and videos in one request, across all its messages (413 above)."
    )
    max_request_frames: int = Field(
        default=64, gt=0, description="Most video frames one request may decode, across all its videos (413 above)."
    )
    max_request_pixels: int = Field(
        default=64 * 448 * 448,
        gt=0,
        description="Most pixels of all a request's images and frames together, after scaling each to "
        "max_pixels_per_frame (413 above; checked from headers before decoding).",
    )
    max_schema_bytes: int = Field(
        default=16 * 1024, gt=0, description="Largest response_format json_schema, as compact JSON (400 above)."
    )
    max_schema_depth: int = Field(
        default=24, gt=0, description="Most JSON levels a response_format json_schema nests (400 above; a schema level is about two)."
    )
    max_schema_enum_values: int = Field(
        default=512, gt=0, description="Most enum and const values in one response_format json_schema, all enums together (400 above)."
    )
    max_schema_compile_s: float = Field(
        default=1.5,
        gt=0,
        description="Longest a response_format's grammar may compile, in the replica's compile server; past it the "
        "compile is killed and the request refused (400). Schemas within the other caps compile in milliseconds; a "
        "66-byte pattern of 400 repeated groups took 2.5 s.",
    )
    max_request_source_pixels: int = Field(
        default=100_000_000,
        gt=0,
        description="Most pixels a request's images hold at their stored size, all together: what decoding them costs "
        "before any scaling (413 above; read from their headers before decoding). 32 images of 40 megapixels took 18 s.",
    )
    default_max_tokens: int = Field(default=64, gt=0, description="New tokens when a request sets none.")
    max_tokens: int = Field(default=512, gt=0, description="Most new tokens a request may ask for.")
    max_choices: int = Field(
        default=8, gt=0, description="Most choices (n) in one chat request; each is a row in the replica's batch."
    )

    @model_validator(mode="after")
    def _default_within_max(self) -> "LimitsSettings":
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(
                f"limits.default_max_tokens ({self.default_max_tokens}) must be less than or equal to "
                f"limits.max_tokens ({self.max_tokens})"
            )
        if self.video_frames > self.max_request_frames:
            raise ValueError(
                f"limits.video_frames ({self.video_frames}) must be less than or equal to "
                f"limits.max_request_frames ({self.max_request_frames}): one video must fit a request"
            )
        if self.video_frames > self.max_video_frames:
            raise ValueError(
                f"limits.video_frames ({self.video_frames}) must be less than or equal to "
                f"limits.max_video_frames ({self.max_video_frames})"
            )
        return self

    def decode_budget(self, targets: int) -> DecodeBudget:
        """A fresh decode budget for one request that samples ``targets`` frames in all."""
        return DecodeBudget(max_frames=self.max_decoded_frames, max_pixels=self.max_decoded_pixels, targets_left=targets)

    def video_limits(self) -> VideoLimits:
        return VideoLimits(
            max_duration_s=self.max_video_duration_s,
            max_source_pixels=self.max_video_source_pixels,
            max_frames=self.max_video_frames,
            target_pixels_per_frame=self.max_pixels_per_frame,
        )


class RequestOomSettings(_Strict):
    """How a request that runs out of memory is retried on the same replica before it goes to the other group."""

    min_frames: int = Field(default=2, ge=1, description="Frames are halved on each retry, down to this many.")
    min_pixels_per_frame: int = Field(
        default=224 * 224, gt=0, description="The pixel budget per image or frame is halved on each retry, down to this."
    )


class MediaSettings(_Strict):
    remote_url_allow_list: tuple[str, ...] = Field(
        default=(),
        description="URL prefixes (scheme://host[:port]/path) that image_url/video_url may fetch; empty means data URLs only.",
    )
    remote_fetch_timeout_s: float = Field(default=10.0, gt=0, description="Timeout of one allowed remote fetch.")

    @field_validator("remote_url_allow_list")
    @classmethod
    def _absolute_http_prefixes(cls, prefixes: tuple[str, ...]) -> tuple[str, ...]:
        for prefix in prefixes:
            parsed = urllib.parse.urlsplit(prefix)
            if parsed.scheme not in {"http", "https"} or not parsed.hostname or parsed.username or parsed.password:
                raise ValueError(
                    f"media.remote_url_allow_list entry {prefix!r} must be an http(s) URL prefix with a host and no "
                    "user info, such as 'https://media.example.com/videos/'"
                )
        return prefixes


class FilesSettings(_Strict):
    """The Files API's store, quotas and the decoded-frame cache."""

    store_url: str = Field(
        default="",
        description="fsspec URL of the file store: a folder (file:///srv/vd-files), s3://bucket/prefix, gs://bucket/prefix. "
        "Empty: a folder under the system temp dir, which only one node sees.",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed to the fsspec filesystem (s3fs: endpoint_url, key, secret, client_kwargs; gcsfs: project, token).",
    )
    max_bytes_per_key: int = Field(default=4 * 1024**3, gt=0, description="Bytes of files one API key may hold (413 above).")
    max_files_per_key: int = Field(default=100, gt=0, description="Files one API key may hold (429 above).")
    ttl_s: float = Field(default=24 * 3600.0, ge=0, description="A file is deleted this long after upload; 0 keeps it.")
    sweep_period_s: float = Field(default=60.0, gt=0, description="How often each ingress deletes expired files.")
    frame_cache_bytes: int = Field(
        default=512 * _MIB, ge=0, description="Decoded frames of uploaded files kept per ingress replica (LRU); 0: none."
    )

    @field_validator("store_url")
    @classmethod
    def _known_protocol(cls, url: str) -> str:
        if not url:
            return url
        import fsspec

        protocol = url.split("://", 1)[0] if "://" in url else "file"
        try:
            fsspec.get_filesystem_class(protocol)
        except (ImportError, ValueError) as error:
            raise ValueError(
                f"files.store_url {url!r}: fsspec cannot open {protocol}:// here ({error}); use file://, s3:// "
                "(s3fs is installed) or install the filesystem's package (gcsfs for gs://)"
            ) from None
        return url


class GenerationSettings(_Strict):
    default_temperature: float = Field(
        default=0.0, ge=0.0, le=2.0, description="Temperature when a request sets none; 0 is greedy."
    )


class AutoscalingSettings(_Strict):
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


class _GroupSettings(_Strict):
    enabled: bool = Field(default=True, description="Deploy this group; at least one group must be enabled.")
    num_cpus: float = Field(default=1.0, gt=0, description="Ray CPUs per replica; also torch's thread count.")
    max_ongoing_requests: int = Field(
        default=16, ge=1, description="Requests one replica holds: its running batch plus its admission queue."
    )
    max_batch_size: int = Field(
        default=8, ge=1, description="Most requests decoding together in one replica (continuous batching)."
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
    min_precision: Literal["fp32", "bf16", "int8", "nf4"] | None = Field(
        default=None,
        description="A quality floor: the chain's precisions below it (fp32 > bf16 > int8 > nf4) are never loaded; "
        "a replica that fits none of the rest waits for memory instead.",
    )
    autoscaling: AutoscalingSettings = AutoscalingSettings()

    @model_validator(mode="after")
    def _floor_leaves_a_chain(self) -> "_GroupSettings":
        if self.min_precision is not None and not at_or_above(tuple(self.chain), self.min_precision):
            raise ValueError(
                f"min_precision {self.min_precision!r} leaves nothing of the chain {list(self.chain)}: "
                f"add {self.min_precision} or a precision above it to the chain, or lower the floor"
            )
        return self

    @model_validator(mode="after")
    def _batch_within_ongoing(self) -> "_GroupSettings":
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
            parse_chain(chain, info.data.get("device", "cpu"))
        except StrategyError as error:
            raise ValueError(str(error)) from error
        return chain

    def strategies(self) -> tuple[LoadStrategy, ...]:
        """The chain to load through: ``chain`` without what ``min_precision`` rules out."""
        return parse_chain(at_or_above(tuple(self.chain), self.min_precision), getattr(self, "device", "cpu"))


class CpuGroupSettings(_GroupSettings):
    chain: tuple[str, ...] = Field(default=DEFAULT_CPU_CHAIN, description="Strategies tried in order.")
    memory_bytes: int = Field(
        default=8 * 1024**3,
        gt=0,
        description="Host memory this replica may use for weights and activations (capped by what is available).",
    )


class FloorSettings(_Strict):
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



class RoutingSettings(_Strict):
    gpu_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="A GPU-group replica that has not taken a call within this long is broken (unschedulable, stuck): "
        "the call goes to the CPU group and the breaker opens.",
    )
    admission_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="A call a replica took but has not admitted (first token) within this long: the group is busy, "
        "not broken; the call is cancelled there and tried on the other group, and the breaker stays closed.",
    )
    cpu_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="The same reachability-and-admission limit for the CPU group (a CPU replica scaling up from zero "
        "loads first; 503 past it).",
    )
    breaker_cooldown_s: float = Field(
        default=15.0, gt=0, description="After a GPU-group failure, send traffic to the CPU group this long before probing."
    )
    drain_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="How long a replica that Serve stops (a rolling update, a scale-down) keeps answering the requests "
        "it holds before it is killed (Serve's graceful_shutdown_timeout_s, for every deployment; Serve's own 20 s "
        "would fail a longer request). The default matches the proxy's request_timeout_s.",
    )


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
    num_replicas: int = Field(default=1, ge=1, description="Ingress replicas (each runs the HTTP edge and a router).")
    num_cpus: float = Field(
        default=0.0,
        ge=0,
        description="Ray CPUs the ingress reserves. 0 (the default): Ray counts CPUs only to schedule (it neither pins "
        "nor caps them), so a reserved share could only keep the ingress from being scheduled once the replica "
        "groups hold a node's CPUs; with none it always starts.",
    )
    max_ongoing_requests: int = Field(default=64, ge=1, description="Requests one ingress replica holds at once.")
    node_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels the ingress's node must carry (Ray's label_selector), e.g. {\"vd-node\": \"head\"}: "
        "a node that is lost takes the requests its ingress holds with it, so keep the ingress off the nodes you "
        "expect to lose. Empty: any node.",
    )
    upload_dir: str | None = Field(
        default=None, description="Where /v1/analyze uploads are spooled (deleted after each request); default: the system temp dir."
    )
    access_log: bool = Field(
        default=False,
        description="Ray Serve's per-request access log lines (cost 1-5 ms a request on 2 cores; see docs/benchmarks.md).",
    )
    api_docs: bool = Field(
        default=False,
        description="Serve /docs (Swagger UI, whose scripts come from a CDN) and /openapi.json. Off by default: a public "
        "deployment need not describe itself; with API keys on, /openapi.json needs a key.",
    )
    allowed_hosts: tuple[str, ...] = Field(
        default=(),
        description="Host header values accepted (e.g. [\"vd.example.com\", \"localhost\"]; a leading '*.' allows "
        "subdomains); a request naming another host is a 400. Empty: any host. Set it for a server on loopback that a "
        "browser reaches: a DNS-rebinding page names its own host.",
    )
    readiness_cache_s: float = Field(
        default=1.0,
        ge=0,
        description="How long /health and /readyz answer from the last readiness read (each read asks every replica to "
        "describe itself; /health needs no key). 0: every call reads.",
    )

    @field_validator("upload_dir")
    @classmethod
    def _upload_dir_exists(cls, upload_dir: str | None) -> str | None:
        if upload_dir is not None and not pathlib.Path(upload_dir).is_dir():
            raise ValueError(f"ingress.upload_dir {upload_dir!r} is not an existing folder; create it or remove the key")
        return upload_dir


class AuthSettings(_Strict):
    api_keys_env: str | None = Field(
        default="VIDEO_DETECTIVE_API_KEYS",
        description="Environment variable holding comma-separated API keys; unset or empty means no keys from it.",
    )
    api_keys_file: str | None = Field(
        default=None, description="A file with one API key per line (a mounted secret); must exist when set."
    )

    admin_keys_env: str | None = Field(
        default="VIDEO_DETECTIVE_ADMIN_KEYS",
        description="Environment variable holding comma-separated admin keys: API keys that may also read the memory "
        "view (/v1/memory). Unset or empty means none from it.",
    )
    admin_keys_file: str | None = Field(
        default=None, description="A file with one admin key per line (a mounted secret); must exist when set."
    )
    anonymous_networks: tuple[str, ...] = Field(
        default=("127.0.0.0/8", "::1/128"),
        description="With no API keys configured, the networks whose callers are answered; everyone else gets a 401 "
        "that says to set keys. A server reachable from elsewhere needs keys, or this list says who may call it "
        "without one ([\"0.0.0.0/0\", \"::/0\"]: anyone).",
    )
    memory_view_networks: tuple[str, ...] = Field(
        default=("127.0.0.0/8", "::1/128"),
        description="Networks whose callers may read the memory view without an admin key. The memory view shows node "
        "addresses, model paths and the PIDs and names of other processes on a GPU; everyone else gets a 403.",
    )

    @model_validator(mode="after")
    def _file_exists(self) -> "AuthSettings":
        for key in ("api_keys_file", "admin_keys_file"):
            path = getattr(self, key)
            if path is not None and not pathlib.Path(path).is_file():
                raise ValueError(f"auth.{key} {path!r} does not exist; point it at a file of keys or remove it")
        return self

    @field_validator("anonymous_networks", "memory_view_networks")
    @classmethod
    def _networks(cls, networks: tuple[str, ...]) -> tuple[str, ...]:
        for network in networks:
            try:
                ipaddress.ip_network(network)
            except ValueError as error:
                raise ValueError(f"{error}; write networks as 10.0.0.0/8 or ::1/128") from None
        return networks


class AppConfig(_Strict):
    model: ModelSettings = ModelSettings()
    limits: LimitsSettings = LimitsSettings()
    generation: GenerationSettings = GenerationSettings()
    gpu_group: GpuGroupSettings = GpuGroupSettings()
    cpu_group: CpuGroupSettings = CpuGroupSettings()
    routing: RoutingSettings = RoutingSettings()
    memory: MemorySettings = MemorySettings()
    ingress: IngressSettings = IngressSettings()
    auth: AuthSettings = AuthSettings()
    request_oom: RequestOomSettings = RequestOomSettings()
    media: MediaSettings = MediaSettings()
    files: FilesSettings = FilesSettings()

    @property
    def floor_enabled(self) -> bool:
        return self.gpu_group.enabled and self.gpu_group.floor.max_replicas > 0

    @model_validator(mode="after")
    def _some_group_enabled(self) -> "AppConfig":
        if not (self.gpu_group.enabled or self.cpu_group.enabled):
            raise ValueError("gpu_group.enabled and cpu_group.enabled are both false; enable at least one group")
        return self


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
                problems.append(f"{location}: unknown key; check the spelling against docs/configuration.md")
            else:
                message = item["msg"].removeprefix("Value error, ")
                problems.append(f"{location}: {message} (got {item.get('input')!r})")
        raise ConfigError("Invalid application args in serve_config.yaml:\n  " + "\n  ".join(problems)) from error
