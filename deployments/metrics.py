"""Prometheus metrics through ``ray.serve.metrics``, labelled by group and precision.

Serve adds its own tags (deployment, replica, application). Names carry units.
"""

from typing import TYPE_CHECKING

from ray.serve import metrics

from memory.probe import MemorySnapshot

if TYPE_CHECKING:
    from models.scheduler import SchedulerStats

_GROUP_TAGS = ("group", "precision")


class ReplicaMetrics:
    """Memory gauges and counters of one model replica."""

    def __init__(self, group: str) -> None:
        self._tags = {"group": group, "precision": "none"}
        self.gpu_allocated_bytes = metrics.Gauge("vd_gpu_allocated_bytes", "torch allocated bytes on the replica's GPU", tag_keys=_GROUP_TAGS)
        self.gpu_reserved_bytes = metrics.Gauge("vd_gpu_reserved_bytes", "torch reserved bytes on the replica's GPU", tag_keys=_GROUP_TAGS)
        self.gpu_free_bytes = metrics.Gauge("vd_gpu_free_bytes", "device-wide free bytes on the replica's GPU", tag_keys=_GROUP_TAGS)
        self.gpu_fragmentation_ratio = metrics.Gauge(
            "vd_gpu_fragmentation_ratio", "(reserved - allocated) / reserved", tag_keys=_GROUP_TAGS
        )
        self.process_rss_bytes = metrics.Gauge("vd_process_rss_bytes", "replica process resident bytes", tag_keys=_GROUP_TAGS)
        self.request_out_of_memory = metrics.Counter(
            "vd_request_out_of_memory_total",
            "generation attempts that ran out of memory, by what followed: retry_smaller or handed_off",
            tag_keys=(*_GROUP_TAGS, "outcome"),
        )
        self.streams_cancelled = metrics.Counter(
            "vd_streams_cancelled_total", "streamed generations stopped because the client went away", tag_keys=_GROUP_TAGS
        )
        self.batch_running = metrics.Gauge("vd_batch_running_requests", "requests in the running batch", tag_keys=_GROUP_TAGS)
        self.batch_waiting = metrics.Gauge(
            "vd_batch_waiting_requests", "requests queued in the replica, waiting for admission", tag_keys=_GROUP_TAGS
        )
        self.admitted_bytes = metrics.Gauge(
            "vd_admitted_bytes", "predicted bytes of the requests admitted to the batch", tag_keys=_GROUP_TAGS
        )
        self.waiting_bytes = metrics.Gauge(
            "vd_waiting_predicted_bytes", "predicted bytes of the requests waiting for admission", tag_keys=_GROUP_TAGS
        )
        self.headroom_bytes = metrics.Gauge(
            "vd_request_headroom_bytes", "bytes admitted requests may use together (budget less weights)", tag_keys=_GROUP_TAGS
        )
        self.load_attempts = metrics.Counter(
            "vd_load_attempts_total", "loading-chain attempts by outcome", tag_keys=(*_GROUP_TAGS, "outcome")
        )

    def set_precision(self, precision: str) -> None:
        self._tags = {**self._tags, "precision": precision}

    def record_snapshot(self, snapshot: MemorySnapshot) -> None:
        self.process_rss_bytes.set(snapshot.process_rss_bytes, tags=self._tags)
        if not snapshot.gpus:
            return
        gpu = snapshot.gpus[0]
        self.gpu_free_bytes.set(gpu.free_bytes, tags=self._tags)
        if gpu.torch is not None:
            self.gpu_allocated_bytes.set(gpu.torch.allocated_bytes, tags=self._tags)
            self.gpu_reserved_bytes.set(gpu.torch.reserved_bytes, tags=self._tags)
            self.gpu_fragmentation_ratio.set(gpu.torch.fragmentation_ratio, tags=self._tags)

    def record_batch(self, stats: "SchedulerStats") -> None:
        self.batch_running.set(stats.running, tags=self._tags)
        self.batch_waiting.set(stats.waiting, tags=self._tags)
        self.admitted_bytes.set(stats.admitted_bytes, tags=self._tags)
        self.waiting_bytes.set(stats.waiting_bytes, tags=self._tags)
        self.headroom_bytes.set(stats.headroom_bytes, tags=self._tags)

    def record_load_attempt(self, strategy: str, outcome: str) -> None:
        self.load_attempts.inc(tags={"group": self._tags["group"], "precision": strategy, "outcome": outcome})

    def record_request_out_of_memory(self, outcome: str) -> None:
        self.request_out_of_memory.inc(tags={**self._tags, "outcome": outcome})

    def record_stream_cancelled(self) -> None:
        self.streams_cancelled.inc(tags=self._tags)


class IngressMetrics:
    def __init__(self) -> None:
        self.fallbacks = metrics.Counter(
            "vd_fallbacks_total", "requests sent to the CPU group because the GPU group could not take them", tag_keys=("reason",)
        )

        self.frame_cache = metrics.Counter(
            "vd_frame_cache_requests_total", "uploaded-file videos asked for, by whether their frames were cached",
            tag_keys=("outcome",),
        )
        self.files_uploaded = metrics.Counter("vd_files_uploaded_total", "files stored through POST /v1/files")

    def record_frame_cache(self, hit: bool) -> None:
        self.frame_cache.inc(tags={"outcome": "hit" if hit else "miss"})

    def record_fallback(self, reason: str) -> None:
        self.fallbacks.inc(tags={"reason": fallback_reason_label(reason)})


def fallback_reason_label(reason: str) -> str:
    """A fallback reason's first words only: a label must have few values."""
    return reason.split(":")[0][:40]
