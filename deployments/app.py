"""The application builder that ``serve_config.yaml`` imports.

``import_path: deployments.app:build_app`` with ``args`` from the YAML file;
the args are validated (:mod:`deployments.config`) and resolved (:mod:`deployments.plan`) before any
deployment is created. One replica class is
deployed two or three times: the GPU group with a fractional GPU share, the GPU
floor replicas (``gpu_group.floor``) on a smaller share at ``min_precision``,
and the CPU group with none, each with its own chain, budget and autoscaling.
"""

import logging
from typing import Any

import ray
from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from deployments.config.app_config import AppConfig, load_app_config
from deployments.config.groups import CpuGroupSettings, GpuGroupSettings
from deployments.edge.ingress import Ingress
from deployments.files.service import node_local_store_problem
from deployments.jobs.runner import JobRunner
from deployments.plan import AppPlan, resolve_app
from deployments.replica.model_replica import ModelReplica
from deployments.routing.groups import DEPLOYMENT_NAMES, GPU_GROUPS, ROUTING_ORDER, in_routing_order
from deployments.routing.ready_replica_router import ROUTER_CLASS_PATH, ROUTING_STATS_PERIOD_S
from deployments.serve_env import REPLICA_ENV
from memory.allocator import allocator_env

logger = logging.getLogger(__name__)

_RUNNER_SHUTDOWN_S = 5.0
# How often a stopping replica looks whether its requests have drained (Serve's graceful_shutdown_wait_loop_s): Serve
# waits at least one such period for each, one deployment after another, so at its 2 s a stop with nothing in flight
# took 2 s for each deployment.
_DRAIN_POLL_S = 0.2


def build_app(args: dict[str, Any]) -> Application:
    """Validate ``args``, plan ``num_gpus: auto``, and bind ingress -> GPU group, GPU floor replicas, CPU group."""
    return build_app_from_config(load_app_config(args))


def _autoscaling(settings: GpuGroupSettings | CpuGroupSettings) -> dict[str, Any]:
    autoscaling = settings.autoscaling
    return {
        "min_replicas": autoscaling.min_replicas,
        "initial_replicas": autoscaling.min_replicas,
        "max_replicas": autoscaling.max_replicas,
        "target_ongoing_requests": autoscaling.target_ongoing_requests,
        "upscale_delay_s": autoscaling.upscale_delay_s,
        "downscale_delay_s": autoscaling.downscale_delay_s,
        "look_back_period_s": autoscaling.look_back_period_s,
        "policy": {"policy_function": "deployments.routing.autoscaling:memory_aware_policy"},
    }


def _group(plan: AppPlan, group: str) -> Application | None:
    if group not in plan.groups:
        return None
    settings = plan.group(group).settings
    # Allocator settings must precede torch's CUDA start; the replica reads them back.
    env_vars = {**settings.env_vars, **allocator_env(plan.config.memory.allocator)}
    num_gpus = plan.group(group).num_gpus
    if group not in GPU_GROUPS:
        # Ray no longer hides the GPU from num_gpus=0 replicas; this group must never touch it.
        env_vars["CUDA_VISIBLE_DEVICES"] = ""
    return serve.deployment(
        ModelReplica,
        name=DEPLOYMENT_NAMES[group],
        max_ongoing_requests=settings.max_ongoing_requests,
        max_queued_requests=settings.max_queued_requests,
        autoscaling_config=_autoscaling(settings),
        health_check_period_s=settings.health_check_period_s,
        graceful_shutdown_timeout_s=plan.config.routing.drain_timeout_s,
        graceful_shutdown_wait_loop_s=_DRAIN_POLL_S,
        request_router_config=RequestRouterConfig(
            request_router_class=ROUTER_CLASS_PATH, request_routing_stats_period_s=ROUTING_STATS_PERIOD_S,
            request_router_kwargs={"media_affinity": plan.config.routing.media_affinity,
                                   "max_load_gap": plan.config.routing.media_affinity_max_load_gap},
        ),
        ray_actor_options=_actor_options(
            settings.num_cpus, num_gpus, env_vars, settings.node_labels, python=plan.group(group).python
        ),
        logging_config={"enable_access_log": plan.config.ingress.access_log},
    ).bind(plan, group)


def _actor_options(
    num_cpus: float, num_gpus: float, env_vars: dict[str, str], node_labels: dict[str, str], python: str | None = None
) -> dict:
    options: dict = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    runtime_env: dict[str, Any] = {"env_vars": {**REPLICA_ENV, **env_vars}}
    if python:
        runtime_env["py_executable"] = python
    if runtime_env:
        options["runtime_env"] = runtime_env
    if node_labels:
        options["label_selector"] = dict(node_labels)
    return options


def build_app_from_config(config: AppConfig) -> Application:
    plan = resolve_app(config)  # gpu_group.num_gpus: auto becomes a number here
    alive_nodes = sum(1 for node in ray.nodes() if node.get("Alive")) if ray.is_initialized() else 1
    problem = node_local_store_problem(config, alive_nodes=alive_nodes)
    if problem:
        logger.warning("NODE-LOCAL FILE STORE ON A CLUSTER: %s", problem)
    ingress = config.ingress
    groups = in_routing_order({name: _group(plan, name) for name in ROUTING_ORDER})  # one mapping, by group name
    return Ingress.options(
        num_replicas=ingress.num_replicas,
        max_ongoing_requests=ingress.max_ongoing_requests,
        graceful_shutdown_timeout_s=config.routing.drain_timeout_s,
        graceful_shutdown_wait_loop_s=_DRAIN_POLL_S,
        ray_actor_options=_actor_options(ingress.num_cpus, 0, {}, ingress.node_labels),
        logging_config={"enable_access_log": ingress.access_log},
    ).bind(groups, config, job_runner=_job_runner(config, groups), max_model_len=plan.max_model_len)


def _job_runner(config: AppConfig, groups: dict[str, Application]) -> Application | None:
    """The one job runner (long videos as jobs), bound to the same groups as the ingress; ``None`` with jobs off."""
    if not config.jobs.enabled:
        return None
    return JobRunner.options(
        name="JobRunner",
        num_replicas=1,
        max_ongoing_requests=1000,  # its methods only read and signal; the segments run in its own tasks
        # Nothing waits on it to finish: what it was running is run again by its successor, from the store.
        graceful_shutdown_timeout_s=_RUNNER_SHUTDOWN_S,
        graceful_shutdown_wait_loop_s=_DRAIN_POLL_S,
        ray_actor_options=_actor_options(config.jobs.num_cpus, 0, {}, config.ingress.node_labels),
        logging_config={"enable_access_log": False},
    ).bind(groups, config)
