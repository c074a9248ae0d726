"""``jobs``: long videos analysed segment by segment as durable jobs (``/v1/video/jobs``)."""

import dataclasses

from pydantic import Field, model_validator

from deployments.config.limits import LimitsSettings
from deployments.config.strict import StrictSettings
from models.media.video import VideoLimits


class JobsSettings(StrictSettings):
    enabled: bool = Field(default=True, description="Serve /v1/video/jobs (a job runner deployment beside the groups).")
    default_segment_s: float = Field(default=60.0, gt=0, description="A segment's length when a job sets none.")
    min_segment_s: float = Field(default=5.0, gt=0, description="The shortest segment a job may ask for (400 below).")
    max_segment_s: float = Field(default=600.0, gt=0, description="The longest segment a job may ask for (400 above).")
    max_segments_per_job: int = Field(
        default=2000, gt=0, description="Most segments one job may cut its video into (400 above: ask for longer segments)."
    )
    max_video_duration_s: float = Field(
        default=4 * 3600.0,
        gt=0,
        description="Longest video a job accepts (413 above). Each segment samples its own range, so a job's memory "
        "does not grow with this; limits.max_video_duration_s still bounds a single request's video.",
    )
    max_running_segments: int = Field(
        default=4,
        gt=0,
        description="Segments in flight at once over all jobs: the share of the groups jobs may take from interactive "
        "requests (which also come first in every replica's queue).",
    )
    max_running_segments_under_load: int = Field(
        default=1,
        ge=1,
        description="Segments in flight at once while interactive requests are: any in flight, or one within "
        "jobs.interactive_quiet_s. At least 1: jobs are guaranteed a segment in flight however busy the interactive "
        "side is (it still comes first in every replica's queue). Running segments finish; the bound applies to new ones.",
    )
    interactive_quiet_s: float = Field(
        default=2.0, ge=0, description="How long after the last interactive request jobs go back to max_running_segments."
    )
    max_running_segments_per_job: int = Field(
        default=2, gt=0, description="Segments of one job in flight at once (jobs share the overall bound fairly)."
    )
    max_active_jobs_per_key: int = Field(
        default=4, gt=0, description="Jobs one API key may have queued or running at once (429 above)."
    )
    max_queued_segments_per_key: int = Field(
        default=2000, gt=0, description="Segments one API key may have waiting over its jobs (429 above)."
    )
    max_jobs_per_key: int = Field(
        default=100,
        gt=0,
        description="Jobs one API key may keep, ended ones included: a new job evicts the key's oldest ended job past "
        "it (429 when every kept job is still running).",
    )
    max_job_creations_per_minute: int = Field(
        default=30, gt=0, description="Jobs one API key may create a minute, per ingress replica (429 with Retry-After above)."
    )
    max_events_per_segment: int = Field(
        default=32,
        gt=0,
        description="Events one segment's result keeps, whatever the caller's schema lets the model write (the result "
        "says how many were dropped).",
    )
    max_event_keys: int = Field(
        default=16, ge=2, description="Keys one event keeps (time_s and description among them); the rest are dropped."
    )
    max_result_bytes_per_job: int = Field(
        default=64 * 2**20,
        gt=0,
        description="Bytes one job's recorded results may take in the store (thumbnails included); a segment whose result "
        "would go past it is recorded as failed. A key's jobs' results count against files.max_bytes_per_key.",
    )
    max_event_streams_per_key: int = Field(
        default=4, gt=0, description="Open GET /v1/video/jobs/{id}/events streams one API key may hold, per ingress replica (429 above)."
    )
    max_event_streams_per_job: int = Field(
        default=2, gt=0, description="Open event streams of one job, per ingress replica (429 above)."
    )
    max_event_streams: int = Field(
        default=16,
        gt=0,
        description="Open event streams one ingress replica holds over all keys, so that streams never take the "
        "slots of ingress.max_ongoing_requests that requests need (429 above).",
    )
    max_event_stream_s: float = Field(
        default=300.0,
        gt=0,
        description="How long one event stream stays open; it then ends with an SSE retry: and the client reconnects "
        "with Last-Event-ID, resuming where it was.",
    )
    segment_attempts: int = Field(
        default=3,
        ge=1,
        description="Tries a segment gets when the replica that took it dies (or the call fails otherwise); a "
        "segment's own fault (a bad range, a prompt over the limit) fails it at once.",
    )
    max_wait_for_groups_s: float = Field(
        default=600.0,
        gt=0,
        description="How long a segment waits, trying again, while no group can take it (all busy, or restarting) "
        "before it is recorded as failed; such tries spend no attempt.",
    )
    ttl_s: float = Field(default=24 * 3600.0, gt=0, description="A job is deleted this long after it ends.")
    scan_period_s: float = Field(
        default=2.0,
        gt=0,
        description="How often the job runner reads the store for jobs it does not run yet (a new runner adopts "
        "every unfinished job this way) and for cancellations.",
    )
    decode_num_cpus: float = Field(
        default=0.25, ge=0, description="Ray CPUs a segment's decode task reserves, on whichever node Ray places it."
    )
    num_cpus: float = Field(
        default=0.0, ge=0, description="Ray CPUs the job runner reserves (it waits on the store and the groups; the decode tasks do the work)."
    )

    def video_limits(self, limits: LimitsSettings) -> VideoLimits:
        """A job's video limits: a request's (``limits``), but for its length (``jobs.max_video_duration_s``): each
        segment samples its own range, so a job's video may be longer than a request's."""
        return dataclasses.replace(limits.video_limits(), max_duration_s=self.max_video_duration_s)

    @model_validator(mode="after")
    def _segment_bounds(self) -> "JobsSettings":
        if self.min_segment_s > self.max_segment_s:
            raise ValueError(
                f"jobs.min_segment_s ({self.min_segment_s:g}) must be at most jobs.max_segment_s ({self.max_segment_s:g})"
            )
        if not self.min_segment_s <= self.default_segment_s <= self.max_segment_s:
            raise ValueError(
                f"jobs.default_segment_s ({self.default_segment_s:g}) must lie between jobs.min_segment_s "
                f"({self.min_segment_s:g}) and jobs.max_segment_s ({self.max_segment_s:g})"
            )
        if self.max_running_segments_under_load > self.max_running_segments:
            raise ValueError(
                f"jobs.max_running_segments_under_load ({self.max_running_segments_under_load}) must be at most "
                f"jobs.max_running_segments ({self.max_running_segments})"
            )
        if self.max_jobs_per_key < self.max_active_jobs_per_key:
            raise ValueError(
                f"jobs.max_jobs_per_key ({self.max_jobs_per_key}) must be at least jobs.max_active_jobs_per_key "
                f"({self.max_active_jobs_per_key}): the kept jobs include the running ones"
            )
        if self.max_running_segments_per_job > self.max_running_segments:
            raise ValueError(
                f"jobs.max_running_segments_per_job ({self.max_running_segments_per_job}) must be at most "
                f"jobs.max_running_segments ({self.max_running_segments})"
            )
        return self
