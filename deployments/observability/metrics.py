"""Prometheus metrics through ``ray.serve.metrics``, labelled by group (and precision where an event ran at one).

Serve adds its own tags (deployment, replica, application); Ray's exporter prefixes every name with ``ray_``.
Names carry units. ``deploy/grafana/video-detective.json`` charts them.
"""

from typing import TYPE_CHECKING

from ray.serve import metrics

from memory.probe import MemorySnapshot

if TYPE_CHECKING:
    from models.engines.contract import EngineStats

# Gauges of what a replica holds now carry its group (Serve adds the replica): a precision tag on them would
# leave a stale series behind at every precision change. Counters of events carry the precision they ran at.
_GAUGE_TAGS = ("group",)
_EVENT_TAGS = ("group", "precision")


def _state_gauge(name: str, description: str) -> metrics.Gauge:
    return metrics.Gauge(name, description, tag_keys=_GAUGE_TAGS)


class ReplicaMetrics:
    """Memory gauges and counters of one model replica."""

    def __init__(self, group: str) -> None:
        self._group = group
        self._precision = "none"
        self._tags = {"group": group}  # gauges of the replica's state: Serve's replica tag names the replica
        self.precision = metrics.Gauge(
            "vd_replica_precision",
            "1 for the precision this replica's model is loaded at (none before it loads), 0 for the ones it left",
            tag_keys=_EVENT_TAGS,
        )
        self.gpu_allocated_bytes = _state_gauge("vd_gpu_allocated_bytes", "torch allocated bytes on the replica's GPU")
        self.gpu_reserved_bytes = _state_gauge("vd_gpu_reserved_bytes", "torch reserved bytes on the replica's GPU")
        self.gpu_free_bytes = _state_gauge("vd_gpu_free_bytes", "device-wide free bytes on the replica's GPU")
        self.gpu_fragmentation_ratio = _state_gauge("vd_gpu_fragmentation_ratio", "(reserved - allocated) / reserved")
        self.process_rss_bytes = _state_gauge("vd_process_rss_bytes", "replica process resident bytes")
        self.batch_running = _state_gauge("vd_batch_running_requests", "requests in the running batch")
        self.batch_waiting = _state_gauge("vd_batch_waiting_requests", "requests queued in the replica, waiting for admission")
        self.admitted_bytes = _state_gauge("vd_admitted_bytes", "predicted bytes of the requests admitted to the batch")
        self.waiting_bytes = _state_gauge("vd_waiting_predicted_bytes", "predicted bytes of the requests waiting for admission")
        self.headroom_bytes = _state_gauge("vd_request_headroom_bytes", "bytes admitted requests may use together (budget less weights)")
        self.kv_cache_usage = _state_gauge("vd_kv_cache_usage_ratio", "part of vLLM's KV cache in use (vLLM engine only)")
        self.prefix_cache_hit_rate = _state_gauge(
            "vd_prefix_cache_hit_ratio", "prompt tokens found in vLLM's prefix cache, of those looked up (vLLM engine only)"
        )
        self.media_cache_hit_ratio = _state_gauge(
            "vd_media_cache_hit_ratio", "media found encoded in the replica's media cache, of those looked up"
        )
        self.media_cache_bytes = _state_gauge("vd_media_cache_bytes", "bytes of encoded media the replica's media cache holds")
        self.request_out_of_memory = metrics.Counter(
            "vd_request_out_of_memory_total",
            "generation attempts that ran out of memory, by what followed: retry_smaller or handed_off",
            tag_keys=(*_EVENT_TAGS, "outcome"),
        )
        self.streams_cancelled = metrics.Counter(
            "vd_streams_cancelled_total", "streamed generations stopped because the client went away", tag_keys=_EVENT_TAGS
        )
        self.load_attempts = metrics.Counter(
            "vd_load_attempts_total", "loading-chain attempts by outcome", tag_keys=(*_EVENT_TAGS, "outcome")
        )
        self.precision.set(1, tags=self._event_tags())

    def _event_tags(self) -> dict[str, str]:
        return {"group": self._group, "precision": self._precision}

    def set_precision(self, precision: str) -> None:
        """The precision the model is now loaded at; the one before reads 0, so a count of 1s is the mix."""
        if precision == self._precision:
            return
        self.precision.set(0, tags=self._event_tags())
        self._precision = precision
        self.precision.set(1, tags=self._event_tags())

    def record_snapshot(self, snapshot: MemorySnapshot) -> None:
        # Recorded again with every snapshot, not only when it changes: a gauge recorded once can fall out of
        # Ray's export under load, and the precision mix would read empty for a while.
        self.precision.set(1, tags=self._event_tags())
        self.process_rss_bytes.set(snapshot.process_rss_bytes, tags=self._tags)
        if not snapshot.gpus:
            return
        gpu = snapshot.gpus[0]
        self.gpu_free_bytes.set(gpu.free_bytes, tags=self._tags)
        if gpu.torch is not None:
            self.gpu_allocated_bytes.set(gpu.torch.allocated_bytes, tags=self._tags)
            self.gpu_reserved_bytes.set(gpu.torch.reserved_bytes, tags=self._tags)
            self.gpu_fragmentation_ratio.set(gpu.torch.fragmentation_ratio, tags=self._tags)

    def record_batch(self, stats: "EngineStats") -> None:
        self.batch_running.set(stats.running, tags=self._tags)
        self.batch_waiting.set(stats.waiting, tags=self._tags)
        self.admitted_bytes.set(stats.admitted_bytes, tags=self._tags)
        self.waiting_bytes.set(stats.waiting_bytes, tags=self._tags)
        self.headroom_bytes.set(stats.headroom_bytes, tags=self._tags)
        if stats.kv_cache_usage is not None:
            self.kv_cache_usage.set(stats.kv_cache_usage, tags=self._tags)
        if stats.prefix_cache_hit_rate is not None:
            self.prefix_cache_hit_rate.set(stats.prefix_cache_hit_rate, tags=self._tags)
        if stats.media_cache is not None:
            self.media_cache_hit_ratio.set(stats.media_cache.hit_ratio, tags=self._tags)
            self.media_cache_bytes.set(stats.media_cache.bytes, tags=self._tags)

    def record_load_attempt(self, strategy: str, outcome: str) -> None:
        self.load_attempts.inc(tags={"group": self._group, "precision": strategy, "outcome": outcome})

    def record_request_out_of_memory(self, outcome: str) -> None:
        self.request_out_of_memory.inc(tags={**self._event_tags(), "outcome": outcome})

    def record_stream_cancelled(self) -> None:
        self.streams_cancelled.inc(tags=self._event_tags())


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
        self.spills = metrics.Counter(
            "vd_floor_spills_total",
            "requests the GPU floor replicas (min_precision) answered because the GPU group could not take them",
            tag_keys=("reason",),
        )

    def record_frame_cache(self, hit: bool) -> None:
        self.frame_cache.inc(tags={"outcome": "hit" if hit else "miss"})

    def record_fallback(self, reason: str) -> None:
        self.fallbacks.inc(tags={"reason": fallback_reason_label(reason)})

    def record_spill(self, reason: str) -> None:
        self.spills.inc(tags={"reason": fallback_reason_label(reason)})


def fallback_reason_label(reason: str) -> str:
    """A fallback reason's first words only: a label must have few values."""
    return reason.split(":")[0][:40]
