"""API keys: ``Authorization: Bearer <key>`` on every route but ``/healthz``, ``/health`` and ``/version``.

Keys come from an environment variable (comma-separated) and/or a file (one
per line, ``#`` comments allowed). With no key configured only callers from
``auth.anonymous_networks`` (loopback by default) are answered, so a server
bound to every address without keys is not open to everyone. Admin keys
may also read the memory view, as may callers from ``auth.memory_view_networks``.
Comparison is constant-time; keys are never logged.
"""

import hmac
import ipaddress
import logging
import os
import pathlib

from deployments.config.ingress import AuthSettings
from deployments.errors import ApiError

logger = logging.getLogger(__name__)


def load_api_keys(settings: AuthSettings, environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """Every key the server accepts: the API keys and the admin keys."""
    keys = _keys(settings.api_keys_env, settings.api_keys_file, environ) + load_admin_keys(settings, environ)
    logger.info("API keys: %s", f"{len(keys)} configured" if keys else "none configured, auth is off")
    return keys


def load_admin_keys(settings: AuthSettings, environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """The keys that may also read the memory view."""
    return _keys(settings.admin_keys_env, settings.admin_keys_file, environ)


def _keys(env_name: str | None, file: str | None, environ: dict[str, str] | None) -> tuple[str, ...]:
    environ = os.environ if environ is None else environ
    keys: list[str] = []
    if env_name:
        keys += [key.strip() for key in environ.get(env_name, "").split(",") if key.strip()]
    if file:
        for line in pathlib.Path(file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(line)
    return tuple(keys)


def check_anonymous(client_host: str | None, networks: tuple[str, ...]) -> None:
    """With no keys configured: a 401 unless the caller is in ``networks`` (loopback by default)."""
    if client_host and _in_networks(client_host, networks):
        return
    raise _unauthorized(
        f"This server has no API keys and answers callers without one only from auth.anonymous_networks; you call "
        f"from {client_host or 'an unknown address'}. Set VIDEO_DETECTIVE_API_KEYS (or auth.api_keys_file) and send "
        "'Authorization: Bearer <key>'"
    )


def check_memory_view(
    authorization: str | None, client_host: str | None, admin_keys: tuple[str, ...], networks: tuple[str, ...]
) -> None:
    """A 403 unless the caller presents an admin key or calls from one of ``networks`` (the key itself is checked
    already)."""
    presented = bearer_key(authorization)
    if presented and any(hmac.compare_digest(presented.encode(), key.encode()) for key in admin_keys):
        return
    if client_host and _in_networks(client_host, networks):
        return
    raise ApiError(
        403, "The memory view shows node addresses, model paths and other processes: it answers admin keys "
        "(auth.admin_keys_env, auth.admin_keys_file) and callers from auth.memory_view_networks",
        error_type="permission_error", code="admin_only",
    )


def _in_networks(host: str, networks: tuple[str, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(network) for network in networks)


def check_bearer(authorization: str | None, keys: tuple[str, ...]) -> None:
    """Raise a 401 unless ``authorization`` carries one of ``keys`` (no-op when there are none)."""
    if not keys:
        return
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise _unauthorized("Missing API key: send 'Authorization: Bearer <key>'")
    presented = presented.strip()
    if not any(hmac.compare_digest(presented.encode(), key.encode()) for key in keys):
        raise _unauthorized("Invalid API key")


def _unauthorized(message: str) -> ApiError:
    return ApiError(
        401, message, error_type="authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
    )


def bearer_key(authorization: str | None) -> str | None:
    """The key an ``Authorization: Bearer <key>`` header presents (checked already by :func:`check_bearer`)."""
    scheme, _, presented = (authorization or "").partition(" ")
    return presented.strip() or None if scheme.lower() == "bearer" else None
