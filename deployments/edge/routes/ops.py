"""Health, readiness, every replica's memory and load (``/v1/memory``), and the version."""

import asyncio
import dataclasses
from typing import Any

import ray
from fastapi import Request
from fastapi.responses import JSONResponse

from deployments.edge.auth import check_memory_view
from deployments.edge.http_app import app
from deployments.edge.readiness import DESCRIBE_TIMEOUT_S, REASON_CHARS
from deployments.edge.routes.base import RETRY_AFTER_S, IngressBase


def _readiness_headers(read_at: float, serving: bool) -> dict[str, str]:
    headers = {"x-readiness-read-at": f"{read_at:.6f}"}
    return headers if serving else {**headers, "Retry-After": RETRY_AFTER_S}


class OpsRoutes(IngressBase):
    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self, request: Request) -> JSONResponse:
        """200 while some group can serve (``degraded`` when not all can), 503 when none can."""
        self._authorize(request)
        read_at, body, serving = await self._readiness.cached()
        return JSONResponse(body, status_code=200 if serving else 503, headers=_readiness_headers(read_at, serving))

    @app.get("/health")
    async def health(self) -> JSONResponse:
        """``/readyz`` on the path vLLM and TGI use (benchmark clients probe it first); no key needed, so the
        body is the status alone, without the replicas' reasons, and it is read at most once per
        ``ingress.readiness_cache_s`` however often it is called."""
        read_at, body, serving = await self._readiness.cached()
        return JSONResponse({"status": body["status"]}, status_code=200 if serving else 503,
                            headers=_readiness_headers(read_at, serving))

    @app.get("/v1/memory")
    async def memory(self, request: Request) -> dict[str, Any]:
        """Every replica of both groups: state, memory snapshot, budget, load report, allocator settings; for admin
        keys and callers from ``auth.memory_view_networks`` only."""
        self._authorize(request)
        check_memory_view(request.headers.get("authorization"), request.client.host if request.client else None,
                          self._admin_keys, self._config.auth.memory_view_networks)
        return {
            "groups": await self._readiness.describe_groups(),
            "gpu_breaker": self._router.breaker.state,
            "breakers": self._router.breaker_states(),
            "fallbacks": self._fallbacks(),
            "fallbacks_by_reason": dict(self._fallbacks_by_reason),
            "floor_spills_by_reason": dict(self._spills_by_reason),
            "frame_cache": dataclasses.asdict(self._files.frames.stats),  # this ingress replica's
            "jobs": await self._describe_jobs(),
        }

    async def _describe_jobs(self) -> dict[str, Any] | None:
        """The job runner's queued and running segments (per group); ``None`` with jobs off."""
        if self._job_runner is None:
            return None
        try:
            return await asyncio.wait_for(self._job_runner.describe.remote(), timeout=DESCRIBE_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - the view shows what it can
            return {"state": "unreachable", "reason": f"{type(error).__name__}: {error}"[:REASON_CHARS]}

    @app.get("/version")
    async def version(self) -> dict[str, str]:
        return {"version": app.version, "ray": ray.__version__}
