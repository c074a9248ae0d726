"""The HTTP edge: a FastAPI app served by a CPU-only Ray Serve deployment.

The ingress builds what its routes share and wires them: the routes live one module a resource in
:mod:`deployments.edge.routes`, each a FastAPI router and a mixin of this class, and Serve binds their methods to
it. It parses and checks requests, decodes media off the event loop, and calls the replica groups through one
router. Every error is answered as JSON with a status and a message; the stack trace goes to the log, never to the
client.

No ``from __future__ import annotations`` here or in the routes: FastAPI must see real annotations, or it reads a
pydantic body as a query parameter.
"""

import asyncio
import collections
import logging
import time

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.config.app_config import AppConfig
from deployments.edge.auth import load_admin_keys, load_api_keys
from deployments.edge.http_app import app
from deployments.edge.job_events import EventStreamSlots
from deployments.edge.rate_limit import PerKeyRate
from deployments.edge.readiness import Readiness
from deployments.edge.routes import ROUTES
from deployments.files.service import FilesService
from deployments.files.uploads import remove_stale_uploads
from deployments.jobs.store import JobStore
from deployments.observability.logs import route_logs_through_serve
from deployments.observability.metrics import IngressMetrics, fallback_reason_label
from deployments.routing.group_watch import GroupWatch, cpu_group_always_runs
from deployments.routing.groups import GPU_FLOOR_GROUP, GPU_GROUP, in_routing_order
from deployments.routing.interactive_load import InteractiveLoad, withdraw
from deployments.routing.router import router_for
from deployments.routing.shared_breaker import SharedBreakers
from models.checkpoint_source import checkpoint_folder
from models.media.visual_tokens import VisualTokenGeometry

logger = logging.getLogger(__name__)

# Upload files older than this at start-up were left by an ingress that died mid-request.
_STALE_UPLOAD_S = 6 * 3600.0

class IngressReplica(*ROUTES):  # type: ignore[misc]
    """CPU-only front door; routes to the GPU group, else the GPU floor replicas, else the CPU group."""

    def __init__(
        self,
        groups: dict[str, DeploymentHandle],
        config: AppConfig,
        job_runner: DeploymentHandle | None = None,
        *,
        max_model_len: int,
    ) -> None:
        """``groups``: the running groups' handles by name (``deployments.routing.groups``), in routing order."""
        route_logs_through_serve()
        remove_stale_uploads(config.ingress.upload_dir, older_than_s=_STALE_UPLOAD_S)
        self._groups = in_routing_order(groups)
        self._config = config
        self._model_id = config.model.model_id
        # The built-in tiny model is a Qwen2-VL with the processor's defaults; a checkpoint says its own sizes.
        source, options = config.model.source, config.model.storage_options
        self._geometry = (
            VisualTokenGeometry() if source == "tiny"
            else VisualTokenGeometry.from_model_folder(checkpoint_folder(source, storage_options=options, metadata_only=True))
        )
        self._api_keys = load_api_keys(config.auth)
        self._admin_keys = load_admin_keys(config.auth)
        app.state.allowed_hosts = config.ingress.allowed_hosts  # one Ingress a process: the middleware reads it here
        # No keys: loopback in every sense (the Host a loopback name or an anonymous network's address, no cross-site).
        app.state.keyless_networks = None if self._api_keys else config.auth.anonymous_networks
        self._started = int(time.time())
        self._max_model_len = max_model_len  # the plan's: what one request may use, prompt and answer (/v1/models)
        self._fallbacks_by_reason: collections.Counter[str] = collections.Counter()
        self._spills_by_reason: collections.Counter[str] = collections.Counter()
        self._metrics = IngressMetrics()
        app_name = serve.get_replica_context().app_name
        self._router = router_for(
            config, self._groups, on_fallback=self._count_fallback, on_spill=self._count_spill,
            shared_breakers=SharedBreakers(app_name),
        )
        # Serve's count of the GPU groups' running replicas, read for the calls routed (none while idle).
        self._watch = GroupWatch.for_router(app_name, self._router)
        self._warm_task = asyncio.get_event_loop().create_task(
            self._watch.warm_up(self._router, cpu_group_always_runs(config))
        )
        # Groups that scale to zero: with no replica running they are idle, not down.
        idle_at_zero = {GPU_FLOOR_GROUP} | ({GPU_GROUP} if config.gpu_group.autoscaling.min_replicas == 0 else set())
        self._readiness = Readiness(self._groups, self._router, self._watch, idle_at_zero=idle_at_zero,
                                    cache_s=config.ingress.readiness_cache_s, fallbacks=self._fallbacks)
        self._files = FilesService(config, on_cache_lookup=self._metrics.record_frame_cache,
                                   held_by_jobs=lambda owner: sum(job.result_bytes for job in self._jobs.owned(owner)))
        self._jobs = JobStore(self._files.store)
        self._job_runner = job_runner
        self._runner_calls: set[asyncio.Task] = set()
        self._interactive = InteractiveLoad()
        self._event_streams = EventStreamSlots(config.jobs)
        self._job_creations = PerKeyRate(config.jobs.max_job_creations_per_minute,
                                         setting="jobs.max_job_creations_per_minute", what="created a job")
        # A key's job creations, one at a time in this replica: its count after the create never misses its own, and
        # 30 parallel POSTs of one key hold one worker thread, not all of them.
        self._creation_locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self._load_task = (
            asyncio.get_event_loop().create_task(self._publish_interactive_load()) if job_runner is not None else None
        )
        self._sweep_task = asyncio.get_event_loop().create_task(self._files.sweep_forever(self._files_in_use))

    def _files_in_use(self) -> frozenset[tuple[str, str]]:
        """(owner, file id) of every unfinished job's video: the file sweep leaves them (called in a worker thread)."""
        if self._job_runner is None:
            return frozenset()
        return frozenset((job.owner, job.file_id) for job in self._jobs.unfinished())

    def __del__(self) -> None:
        """Serve stops this replica: its interactive-load figure goes from the GCS with it."""
        if getattr(self, "_load_task", None) is None:
            return
        self._load_task.cancel()
        try:
            context = serve.get_replica_context()
            withdraw(context.app_name, context.replica_tag)
        except Exception as error:  # noqa: BLE001 - the readers delete a forgotten figure
            logger.warning("Withdrawing the interactive-load figure failed: %s", error)

    async def _publish_interactive_load(self) -> None:
        """Tell the job runner, through the GCS, of this replica's interactive requests while there are any."""
        context = serve.get_replica_context()
        await self._interactive.publish_forever(context.app_name, context.replica_tag)

    def _count_fallback(self, reason: str) -> None:
        self._fallbacks_by_reason[fallback_reason_label(reason)] += 1
        self._metrics.record_fallback(reason)

    def _count_spill(self, reason: str) -> None:
        self._spills_by_reason[fallback_reason_label(reason)] += 1
        self._metrics.record_spill(reason)


# Serve's deployment of the class above. The class stays importable by its name, so a replica imports this module,
# and with it Serve's binding of the routes' methods to the class: the mixins' functions travel by reference, and a
# replica that only unpickled them would call them unbound (422, ``self`` missing).
Ingress = serve.deployment(name="Ingress")(serve.ingress(app)(IngressReplica))
