"""The application builder that ``serve_config.yaml`` imports.

``import_path: deployments.app:build_app`` with ``args`` from the YAML file;
the args are validated before any deployment is created.
"""

import logging
from typing import Any

from ray import serve
from ray.serve import Application

from deployments.config import AppConfig, load_app_config
from deployments.ingress import Ingress
from deployments.model_replica import ModelReplica
from memory.allocator import allocator_env

logger = logging.getLogger(__name__)

CPU_GROUP = "cpu"


def build_app(args: dict[str, Any]) -> Application:
    """Validate ``args`` and bind ingress -> model replica group."""
    return build_app_from_config(load_app_config(args))


def build_app_from_config(config: AppConfig) -> Application:
    replica = config.model_replica
    cpu_group = serve.deployment(
        ModelReplica,
        name="cpu_group",
        num_replicas=replica.num_replicas,
        max_ongoing_requests=replica.max_ongoing_requests,
        ray_actor_options={
            "num_cpus": replica.num_cpus,
            "num_gpus": 0,
            "runtime_env": {
                "env_vars": {
                    # Ray no longer hides the GPU from num_gpus=0 replicas; this group must never touch it.
                    "CUDA_VISIBLE_DEVICES": "",
                    # Allocator settings must precede torch's CUDA start; the replica reads them back.
                    **allocator_env(config.memory.allocator),
                }
            },
        },
        logging_config={"enable_access_log": config.ingress.access_log},
    ).bind(config, CPU_GROUP)
    ingress = config.ingress
    return Ingress.options(
        num_replicas=ingress.num_replicas,
        max_ongoing_requests=ingress.max_ongoing_requests,
        ray_actor_options={"num_cpus": ingress.num_cpus},
        logging_config={"enable_access_log": ingress.access_log},
    ).bind(cpu_group, config)
