"""Job kinds: what a job asks the model, segment by segment, and how the answers become one.

A kind is the four things the runner (:mod:`deployments.jobs.runner`) asks of it; the runner does the rest (the
queue, the attempts, the store, the groups, cancelling). A job names its kind (``JobRecord.kind``).

- :class:`JobKind.plan`: the job's segments;
- :class:`JobKind.segment_request`: a segment's request, from its decoded frames;
- :class:`JobKind.segment_result`: what is recorded of a segment's answer (and the thumbnails stored beside it);
- :class:`JobKind.final_requests`: the final answer's request from the recorded results, then smaller ones, each
  tried when the one before did not fit the model's prompt.

Adding a kind: a module here with a class of these four methods, and one line in :data:`JOB_KINDS`.
"""

from typing import Iterator, Protocol

from deployments.jobs.kinds.video_timeline import VIDEO_TIMELINE
from deployments.jobs.records import JobRecord, Segment
from deployments.jobs.results import SegmentResult
from deployments.replica.protocol import ReplicaAnswer
from models.media.video import SampledVideo
from models.requests import GenerationRequest


class JobKind(Protocol):
    name: str

    def plan(self, job: JobRecord) -> list[Segment]: ...

    def segment_request(
        self, job: JobRecord, segment: Segment, frames: SampledVideo, max_prompt_tokens: int
    ) -> GenerationRequest: ...

    def segment_result(
        self, job: JobRecord, segment: Segment, frames: SampledVideo, answer: ReplicaAnswer, *, attempts: int,
        decode_s: float,
    ) -> tuple[SegmentResult, list[str]]: ...

    def final_requests(
        self, job: JobRecord, results: list[SegmentResult], max_prompt_tokens: int
    ) -> Iterator[tuple[GenerationRequest, int]]:
        """``(request, parts it holds)``, from the fullest to the smallest the kind allows."""


JOB_KINDS: dict[str, JobKind] = {VIDEO_TIMELINE.name: VIDEO_TIMELINE}


def kind_of(job: JobRecord) -> JobKind:
    try:
        return JOB_KINDS[job.kind]
    except KeyError:
        raise ValueError(f"job {job.id} is of kind {job.kind!r}, which this server does not run "
                         f"(it runs {', '.join(JOB_KINDS)})") from None
