"""A small stand-in for Serve's AutoscalingContext, for the autoscaling policy's tests."""

import types

GIB = 1024**3


class _Config:
    def get_target_ongoing_requests(self) -> float:
        return 1.0


def autoscaling_context(
    *, running: list[str], ready: dict[str, float | list[float]], requests: float, app_name: str | None = None
) -> object:
    """A small stand-in for Serve's AutoscalingContext: the fields the policy reads. ``ready`` is each replica's
    reports, oldest first (one number: a single report)."""
    series = {replica: values if isinstance(values, list) else [values] for replica, values in ready.items()}

    def timeline(value_of) -> dict[str, list]:
        return {
            replica: [types.SimpleNamespace(timestamp=float(t), value=value_of(v)) for t, v in enumerate(values)]
            for replica, values in series.items()
        }

    raw = {"ready": timeline(float), "free_bytes": timeline(lambda _: float(30 * GIB)), "need_bytes": timeline(lambda _: float(16 * GIB))}
    averaged = {name: {replica: sum(p.value for p in points) / len(points) for replica, points in by_replica.items()}
                for name, by_replica in raw.items()}
    return types.SimpleNamespace(
        raw_metrics=raw,
        aggregated_metrics=averaged,
        running_replicas=running,
        total_num_requests=requests,
        total_queued_requests=0,
        current_num_replicas=len(running),
        config=_Config(),
        app_name=app_name,
        deployment_name="gpu_group",
    )
