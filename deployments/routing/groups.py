"""The replica groups' names, in the order the router tries them, and their Serve deployment names.

- ``gpu``: the GPU group, at the best precision of its chain that fits its share of a card;
- ``gpu_floor``: GPU replicas at ``gpu_group.min_precision`` on a smaller share, for the GPU group's overflow
  (only with ``gpu_group.floor.max_replicas`` above 0);
- ``cpu``: the CPU group, the last resort.
"""

from typing import Mapping, TypeVar

T = TypeVar("T")

GPU_GROUP = "gpu"
GPU_FLOOR_GROUP = "gpu_floor"
CPU_GROUP = "cpu"

ROUTING_ORDER = (GPU_GROUP, GPU_FLOOR_GROUP, CPU_GROUP)
GPU_GROUPS = frozenset({GPU_GROUP, GPU_FLOOR_GROUP})
DEPLOYMENT_NAMES = {GPU_GROUP: "gpu_group", GPU_FLOOR_GROUP: "gpu_floor_group", CPU_GROUP: "cpu_group"}


def in_routing_order(handles: Mapping[str, T]) -> dict[str, T]:
    """The groups of ``handles`` (keyed by the names above, each a deployment's handle, or ``None`` for a group not
    running) that run, in the order the router tries them: the one shape the ingress, the router and the job
    runner take the groups in. A name outside this module's is a programming error."""
    unknown = set(handles) - set(ROUTING_ORDER)
    if unknown:
        raise ValueError(f"Unknown replica groups {sorted(unknown)}; the groups are {list(ROUTING_ORDER)}")
    return {name: handles[name] for name in ROUTING_ORDER if handles.get(name) is not None}
