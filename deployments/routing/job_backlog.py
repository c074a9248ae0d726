"""The job backlog (segments queued, not yet sent) as the autoscaling policy sees it.

The job runner publishes how many segments wait, for the group they will go to first, in the GCS's key-value
store every time the count changes and, while any wait, every scan period; each group's autoscaling policy (in the
Serve controller) adds its share to the requests it scales for. A figure older than ``MAX_AGE_S`` (a runner
that died) counts as none. The controller reads the figure once every ``READ_EVERY_S`` at most, for all groups:
its control loop calls each group's policy on every turn.
"""

import json
import logging
import time

from ray.experimental import internal_kv

logger = logging.getLogger(__name__)

MAX_AGE_S = 30.0
READ_EVERY_S = 1.0
KV_NAMESPACE = "video-detective"  # this app's keys in the GCS key-value store

_last_read: dict[str, tuple[float, bytes | None]] = {}  # app name -> (when read, the raw figure)


def _key(app_name: str) -> str:
    return f"job-backlog:{app_name}"


def publish_backlog(app_name: str, queued_by_deployment: dict[str, int]) -> None:
    value = json.dumps({"at": time.time(), "queued": queued_by_deployment}).encode()
    internal_kv._internal_kv_put(_key(app_name), value, overwrite=True, namespace=KV_NAMESPACE)


def read_backlog(app_name: str | None, deployment_name: str, *, now: float | None = None) -> int:
    """Segments queued for ``deployment_name``, as last published (0: none, unknown or stale)."""
    if not app_name or not internal_kv._internal_kv_initialized():
        return 0
    read_at, raw = _last_read.get(app_name, (-READ_EVERY_S, None))
    if time.monotonic() - read_at >= READ_EVERY_S:
        try:
            raw = internal_kv._internal_kv_get(_key(app_name), namespace=KV_NAMESPACE)
        except Exception as error:  # noqa: BLE001 - a GCS hiccup must not stop the autoscaler
            logger.warning("Reading the job backlog failed: %s", error)
            return 0
        _last_read[app_name] = (time.monotonic(), raw)
    if not raw:
        return 0
    published = json.loads(raw)
    if (now if now is not None else time.time()) - published["at"] > MAX_AGE_S:
        return 0
    return int(published["queued"].get(deployment_name, 0))
