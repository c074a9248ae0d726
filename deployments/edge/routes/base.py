"""What every route mixin shares: the ingress's state, the caller's key, the served model's name, and calls to the
replica groups answered with the status a client can act on."""

import asyncio
import collections
from typing import Any, Awaitable

from fastapi import Request
from ray.serve.handle import DeploymentHandle

from deployments.config.app_config import AppConfig
from deployments.edge.auth import bearer_key, check_anonymous, check_bearer
from deployments.edge.job_events import EventStreamSlots
from deployments.edge.rate_limit import PerKeyRate
from deployments.edge.readiness import Readiness
from deployments.errors import ApiError
from deployments.files.service import FilesService
from deployments.files.store import owner_of
from deployments.jobs.store import JobStore
from deployments.observability.metrics import IngressMetrics
from deployments.replica.protocol import ReplicaAnswer, ServedBy
from deployments.routing.group_watch import GroupWatch
from deployments.routing.interactive_load import InteractiveLoad
from deployments.routing.router import GroupRouter, NoGroupAvailableError, remote_cause
from models.errors import InvalidModelInputError, InvalidParameterError, PromptTooLongError
from models.media.visual_tokens import VisualTokenGeometry
from models.requests import GenerationRequest

RETRY_AFTER_S = "5"


class IngressBase:
    """The state :class:`~deployments.edge.ingress.Ingress` builds, and the helpers every resource's routes use."""

    _config: AppConfig
    _model_id: str
    _geometry: VisualTokenGeometry
    _api_keys: tuple[str, ...]
    _admin_keys: tuple[str, ...]
    _groups: dict[str, DeploymentHandle]
    _router: GroupRouter
    _watch: GroupWatch
    _readiness: Readiness
    _metrics: IngressMetrics
    _files: FilesService
    _jobs: JobStore
    _job_runner: DeploymentHandle | None
    _runner_calls: set[asyncio.Task]
    _interactive: InteractiveLoad
    _event_streams: EventStreamSlots
    _job_creations: PerKeyRate
    _creation_locks: collections.defaultdict[str, asyncio.Lock]
    _started: int
    _max_model_len: int
    _fallbacks_by_reason: collections.Counter[str]
    _spills_by_reason: collections.Counter[str]

    def _fallbacks(self) -> int:
        return sum(self._fallbacks_by_reason.values())

    def _authorize(self, request: Request) -> str:
        """Check the caller's key (when keys are on); the owner its files are stored under."""
        authorization = request.headers.get("authorization")
        if not self._api_keys:
            check_anonymous(request.client.host if request.client else None, self._config.auth.anonymous_networks)
            return owner_of(None)
        check_bearer(authorization, self._api_keys)
        return owner_of(bearer_key(authorization))

    def _check_served_model(self, requested: str | None) -> None:
        """A request may name the model; any name but the served one is a 404 (every route that takes one)."""
        if requested is not None and requested != self._model_id:
            raise ApiError(
                404,
                f"The model {requested!r} is not served here; this server serves {self._model_id!r} (GET /v1/models)",
                error_type="not_found_error",
                param="model",
                code="model_not_found",
            )

    async def _generate(self, generation_request: GenerationRequest) -> ReplicaAnswer:
        return await self._with_api_errors(self._router.call("generate_stream", generation_request))

    async def _with_api_errors(self, routed: Awaitable[Any]) -> Any:
        """The router's call, once it knows which GPU groups have a replica running; errors from the replica groups,
        as the status a client can act on."""
        try:
            await self._watch.recent()
            return await routed
        except InvalidModelInputError as error:
            raise ApiError(
                400, f"The model cannot take this input: {remote_cause(error)}", code="invalid_model_input"
            ) from error
        except PromptTooLongError as error:
            raise ApiError(413, str(remote_cause(error)), code="prompt_too_long") from error
        except InvalidParameterError as error:
            cause = remote_cause(error)
            raise ApiError(400, str(cause), param=getattr(cause, "param", None), code="invalid_parameter") from error
        except NoGroupAvailableError as error:
            what = "Every model replica is busy" if error.busy else "No model replica can take the request now"
            raise ApiError(
                503,
                f"{what}: {error}. Retry later.",
                error_type="service_unavailable",
                code="overloaded" if error.busy else "unavailable",
                headers={"Retry-After": RETRY_AFTER_S},
            ) from error


def served_by_headers(served_by: ServedBy, inference_seconds: float | None = None) -> dict[str, str]:
    headers = {
        "x-served-by-group": served_by.group,
        "x-served-by-replica": served_by.replica,
        "x-served-by-precision": served_by.precision,
    }
    if inference_seconds is not None:
        headers["x-inference-seconds"] = f"{inference_seconds:.4f}"
    return headers
