"""The HTTP edge (``ingress``) and who may call it (``auth``)."""

import ipaddress
import pathlib

from pydantic import Field, field_validator, model_validator

from deployments.config.strict import StrictSettings


class IngressSettings(StrictSettings):
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


class AuthSettings(StrictSettings):
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
