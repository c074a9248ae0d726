"""Optional API keys: ``Authorization: Bearer <key>`` on every route but ``/healthz``, ``/health`` and ``/version``.

Keys come from an environment variable (comma-separated) and/or a file (one
per line, ``#`` comments allowed). With no key configured, auth is off.
Comparison is constant-time; keys are never logged.
"""

import hmac
import logging
import os
import pathlib

from deployments.config import AuthSettings
from deployments.errors import ApiError

logger = logging.getLogger(__name__)


def load_api_keys(settings: AuthSettings, environ: dict[str, str] | None = None) -> tuple[str, ...]:
    environ = os.environ if environ is None else environ
    keys: list[str] = []
    if settings.api_keys_env:
        keys += [key.strip() for key in environ.get(settings.api_keys_env, "").split(",") if key.strip()]
    if settings.api_keys_file:
        for line in pathlib.Path(settings.api_keys_file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(line)
    logger.info("API keys: %s", f"{len(keys)} configured" if keys else "none configured, auth is off")
    return tuple(keys)


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
