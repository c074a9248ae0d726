"""Memory-aware autoscaling: the arithmetic as a pure function, and the policy Serve calls.

Each replica reports, through ``record_autoscaling_stats``, whether it is
ready, how many bytes are free where it runs (device-wide on a GPU, host
available on a CPU) and how many bytes one more replica like it needs
(its measured weights plus the activation reserve). The policy:

1. wants ``ceil(requests / target_ongoing_requests)`` replicas, counting queued
   requests too, so it scales out before queues build;
2. does not add replicas while one is still loading or waiting for memory
   (another would wait too; a running replica that has not reported yet has
   just started and counts as loading), nor when the reported headroom shows
   one more will not fit (it would only wait for memory and hold a GPU share);
3. scales in freely. Serve applies min / max and the up / down delays.

Long-video jobs' queued segments count as requests too (:mod:`deployments.routing.job_backlog`: the job
runner publishes them for the group they go to first), so a backlog scales that group out within
``max_replicas`` before its segments are sent.

Example: 2 ready replicas each reporting 30 GiB free, one needs 16 GiB, 9
requests in flight, target 2 -> ceil(9 / 2) = 5 wanted; headroom fits another,
so 5 (Serve then caps it at max_replicas). With 10 GiB free instead: stay at 2.
"""

import dataclasses
import logging
import math
from typing import Any

from deployments.routing.job_backlog import read_backlog

logger = logging.getLogger(__name__)

READY_METRIC = "ready"
FREE_BYTES_METRIC = "free_bytes"
NEED_BYTES_METRIC = "need_bytes"


@dataclasses.dataclass(frozen=True)
class ReplicaReport:
    ready: bool
    free_bytes: int
    need_bytes: int


STARTING = ReplicaReport(ready=False, free_bytes=0, need_bytes=0)


def desired_replicas(
    *, current: int, total_requests: float, target_per_replica: float, reports: list[ReplicaReport]
) -> tuple[int, str]:
    """How many replicas to run, and why. Pure: no Ray, no clock."""
    wanted = math.ceil(total_requests / target_per_replica) if total_requests > 0 else 0
    if wanted <= current:
        return wanted, f"{total_requests:g} requests / target {target_per_replica:g} -> {wanted}"
    not_ready = sum(1 for report in reports if not report.ready)
    if not_ready:
        return current, f"{not_ready} replica(s) still loading or waiting for memory; not adding more"
    if reports:
        headroom = max(report.free_bytes for report in reports)
        need = max(report.need_bytes for report in reports)
        if headroom < need:
            return current, f"reported headroom {headroom} bytes < {need} bytes one more replica needs; not adding"
    return wanted, f"{total_requests:g} requests / target {target_per_replica:g} -> {wanted}"


def latest_values(raw_metrics: dict[str, dict[Any, list[Any]]] | None) -> dict[str, dict[Any, float]]:
    """Each metric's most recent value per replica, from Serve's raw time series."""
    latest: dict[str, dict[Any, float]] = {}
    for name, by_replica in (raw_metrics or {}).items():
        latest[name] = {
            replica: max(series, key=lambda point: point.timestamp).value for replica, series in by_replica.items() if series
        }
    return latest


def memory_aware_policy(ctx: Any) -> tuple[int, dict[str, Any]]:
    """``autoscaling_config.policy.policy_function`` (runs in the Serve controller)."""
    # The latest value each replica reported, not the window's average: averaged over look_back_period_s, a
    # replica that has just loaded would count as loading for half a window and hold back a scale-out.
    metrics = latest_values(ctx.raw_metrics) or ctx.aggregated_metrics or {}
    reported = metrics.get(READY_METRIC, {})
    reports = [
        ReplicaReport(
            ready=reported.get(replica, 0.0) >= 0.5,
            free_bytes=int(metrics.get(FREE_BYTES_METRIC, {}).get(replica, 0)),
            need_bytes=int(metrics.get(NEED_BYTES_METRIC, {}).get(replica, 0)),
        )
        for replica in set(reported)
    ]
    # A running replica that has not reported yet has just started: its model is still loading.
    reports += [STARTING for replica in (ctx.running_replicas or []) if replica not in reported]
    backlog = read_backlog(ctx.app_name, ctx.deployment_name)
    total = ctx.total_num_requests + (ctx.total_queued_requests or 0) + backlog
    desired, reason = desired_replicas(
        current=ctx.current_num_replicas,
        total_requests=total,
        target_per_replica=ctx.config.get_target_ongoing_requests(),
        reports=reports,
    )
    if backlog:
        reason += f" ({backlog} of them job segments waiting)"
    return desired, {"reason": reason}
