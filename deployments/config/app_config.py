"""The whole config (:class:`AppConfig`), its smaller sections, and ``load_app_config``, which names every bad key."""

import pathlib
from typing import Any

import pydantic
from pydantic import Field, field_validator, model_validator

from deployments.config.groups import CpuGroupSettings, GpuGroupSettings
from deployments.config.ingress import AuthSettings, IngressSettings
from deployments.config.jobs import JobsSettings
from deployments.config.limits import LimitsSettings, MediaSettings, RequestOomSettings
from deployments.config.strict import MIB, StrictSettings
from memory.allocator import DEFAULT_ALLOCATOR_SETTINGS, AllocatorConfigError, validate_allocator_settings
from models.adapters.names import AdapterName
from models.checkpoint_source import is_remote_source, source_protocol_problem


class ModelSettings(StrictSettings):
    source: str = Field(
        default="tiny",
        description="'tiny' for the built-in tiny Qwen2-VL; the path of a checkpoint folder (a volume mounted at the same "
        "path on every node); or an object store's folder (s3://bucket/models/name, any fsspec URL), fetched once per "
        "node into $VIDEO_DETECTIVE_CACHE/checkpoints.",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed to fsspec for model.source and model.weight_cache_url (s3fs reads AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL from the environment when these are not given).",
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
    weight_cache_url: str = Field(
        default="",
        description="An object store's folder (s3://bucket/weights) every node reads: a quantized load stored by one "
        "node is fetched by the others into their local weight cache instead of quantizing again. Empty: each node's own.",
    )

    @model_validator(mode="after")
    def _source_exists(self) -> "ModelSettings":
        for key, url in (("model.source", self.source), ("model.weight_cache_url", self.weight_cache_url)):
            problem = source_protocol_problem(url) if is_remote_source(url) else None
            if problem:
                raise ValueError(f"{key} {url!r}: {problem}")
        if self.weight_cache_url and not is_remote_source(self.weight_cache_url):
            raise ValueError(
                f"model.weight_cache_url {self.weight_cache_url!r} is not an object store URL; use s3://bucket/prefix "
                "(or leave it empty: each node keeps its own weight cache in model.weight_cache_dir)"
            )
        if self.source != "tiny" and not is_remote_source(self.source) and not pathlib.Path(self.source.removeprefix("file://")).is_dir():
            raise ValueError(
                f"model.source {self.source!r} is neither 'tiny', an existing checkpoint folder nor an object store URL; "
                "set it to 'tiny', to a local folder holding config.json and the weights, or to s3://bucket/prefix"
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
        if is_remote_source(self.source):
            return self.source.rstrip("/").rsplit("/", 1)[-1]
        return pathlib.Path(self.source.removeprefix("file://")).resolve().name


class FilesSettings(StrictSettings):
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
        default=512 * MIB, ge=0, description="Decoded frames of uploaded files kept per ingress replica (LRU); 0: none."
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


class GenerationSettings(StrictSettings):
    default_temperature: float = Field(
        default=0.0, ge=0.0, le=2.0, description="Temperature when a request sets none; 0 is greedy."
    )


class RoutingSettings(StrictSettings):
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
    media_affinity: bool = Field(
        default=True,
        description="Send a question about an image or video to the replica of its group that holds it encoded (its "
        "media cache), so the second question skips the encoding; off: Serve's power of two choices alone.",
    )
    media_affinity_max_load_gap: int = Field(
        default=2,
        ge=0,
        description="Affinity yields to load: a replica holding the media is chosen only while it has at most this "
        "many more requests in flight than the group's least-loaded ready replica (vLLM's and Serve's prefix-affinity "
        "routers guard the same way).",
    )
    drain_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="How long a replica that Serve stops (a rolling update, a scale-down) keeps answering the requests "
        "it holds before it is killed (Serve's graceful_shutdown_timeout_s, for every deployment; Serve's own 20 s "
        "would fail a longer request). The default matches the proxy's request_timeout_s.",
    )


class MemorySettings(StrictSettings):
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


class AppConfig(StrictSettings):
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
    jobs: JobsSettings = JobsSettings()

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
