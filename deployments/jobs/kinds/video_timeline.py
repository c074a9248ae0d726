"""The video timeline, the first job kind (:mod:`deployments.jobs.kinds`): a segment's request and its result, and
the final answer's request: what a job asks the model, and how the answers become a timeline in the whole video's
clock.

Each segment is asked the job's question about its own range, with its frames (their times in the whole
video's clock, as the chat template shows them) and the job's schema: by default a list of events, each a time
and a description. An event's time is put in the whole video's clock: a time inside the segment stands; one
inside ``[0, segment length)`` was counted from the segment's start; any other is moved to the nearest end of
the segment and marked ``time_adjusted``. Each event names the sampled frame nearest to it (``frame``); the
frames' thumbnails are stored once per frame beside the result (:meth:`JobStore.put_segment`) and served by
their own route, never copied into events. A segment keeps at most ``jobs.max_events_per_segment`` events of at
most ``jobs.max_event_keys`` keys each, whatever the caller's schema lets the model write; the result says how
many were dropped. Numbers the model wrote that JSON cannot carry (``1e999``, ``NaN``) are recorded as ``null``.

The final answer is one more request, text only: the job's question over the timeline's events, in time
order. A timeline too long for ``limits.max_prompt_tokens`` is thinned (every other event dropped, evenly over
the video) until it fits; the job says how many events the final prompt held.
"""

import bisect
import dataclasses
import itertools
import json
import math
from typing import Any, Iterable, Iterator

from deployments.config.jobs import JobsSettings
from deployments.jobs.records import JobRecord, Segment
from deployments.jobs.results import SegmentResult, SegmentState
from deployments.replica.protocol import ReplicaAnswer
from models.media.identity import media_source
from models.media.thumbnails import frame_thumbnails
from models.media.video import SampledVideo
from models.requests import ChatMessage, DecodingOptions, GenerationRequest, ResponseFormat, TextPart, VideoPart

# At most this many events a segment, each described in at most this many characters: a bounded answer, which
# a grammar-constrained model cannot ramble past.
MAX_EVENTS_PER_SEGMENT = 8
MAX_EVENT_CHARS = 200
DEFAULT_EVENTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "events": {
            "type": "array",
            "maxItems": MAX_EVENTS_PER_SEGMENT,
            "items": {
                "type": "object",
                "properties": {
                    "time_s": {"type": "number"},
                    "description": {"type": "string", "maxLength": MAX_EVENT_CHARS},
                },
                "required": ["time_s", "description"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["events"],
    "additionalProperties": False,
}
BACKGROUND_PRIORITY = 1  # interactive requests are 0: first in every replica's queue


def schema_json(schema: dict[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def clock(seconds: float) -> str:
    """``h:mm:ss`` (``1:02:03``), the way a person reads a time in a long video."""
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def segment_request(job: JobRecord, segment: Segment, sampled: SampledVideo, max_prompt_tokens: int) -> GenerationRequest:
    instruction = (
        f"These frames are the part of a longer video from {clock(segment.start_s)} to {clock(segment.end_s)} "
        f"({segment.start_s:.1f} s to {segment.end_s:.1f} s); every time is in seconds from the video's start. "
        f"{job.question}"
    )
    if not job.custom_schema:
        instruction += " List what happens in this part as events, each with its time in seconds and a short description."
    # The job's file, identified as a question about it is: a segment asked again hits the caches its first run filled.
    video = VideoPart(frames=sampled.frames, timestamps_s=sampled.timestamps_s, source=media_source(job.owner, job.file_sha256))
    return GenerationRequest(
        messages=(ChatMessage(role="user", content=(video, TextPart(instruction))),),
        max_new_tokens=job.max_tokens,
        temperature=job.temperature,
        seed=None if job.seed is None else (job.seed + segment.index) % 2**63,  # each segment its own, in range
        max_prompt_tokens=max_prompt_tokens,
        options=DecodingOptions(response_format=ResponseFormat(kind="json_schema", schema_json=job.json_schema)),
        priority=BACKGROUND_PRIORITY,
    )


@dataclasses.dataclass(frozen=True)
class EventBounds:
    """What one segment's result may hold (``jobs.max_events_per_segment``, ``jobs.max_event_keys``)."""

    max_events: int
    max_keys: int


def parse_answer(text: str) -> Any:
    """The model's JSON answer with every non-finite number (``1e999``, ``Infinity``, ``NaN``) as ``None``;
    ``ValueError`` when it is not JSON (or nests past the parser's depth)."""
    try:
        return json.loads(text, parse_constant=lambda _name: None, parse_float=_finite_float)
    except RecursionError as error:
        raise ValueError("it nests deeper than the parser goes") from error


def _finite_float(literal: str) -> float | None:
    value = float(literal)
    return value if math.isfinite(value) else None


def segment_result(
    job: JobRecord,
    segment: Segment,
    sampled: SampledVideo,
    answer: ReplicaAnswer,
    *,
    attempts: int,
    decode_s: float,
    bounds: EventBounds,
) -> tuple[SegmentResult, list[str]]:
    """What is recorded for a segment the model answered: its answer parsed, its events in the whole video's
    clock (each naming its nearest frame), its frames' times, who served it and what it cost; and the frames'
    thumbnails, stored once beside it."""
    text = answer.result.text
    try:
        parsed: Any = parse_answer(text)
        parse_error = None
    except ValueError as error:
        parsed, parse_error = None, f"the answer is not JSON ({error}); finish_reason {answer.result.finish_reason}"
    times = list(sampled.timestamps_s)
    used_times = list(answer.used_timestamps_s or times)
    thumbnails = frame_thumbnails(sampled.frames)
    found = _events_of(parsed, job.custom_schema, segment)
    kept = found[: bounds.max_events]
    events = sorted((_placed(event, segment, times, bounds.max_keys) for event in kept), key=lambda event: event["time_s"])
    return SegmentResult(
        index=segment.index,
        start_s=segment.start_s,
        end_s=segment.end_s,
        state=SegmentState.DONE,
        attempts=attempts,
        events=tuple(events),
        answer=parsed,
        text=text,
        parse_error=parse_error,
        finish_reason=answer.result.finish_reason,
        events_dropped=len(found) - len(kept),
        thumbnail_frame=len(thumbnails) // 2,
        # What the model saw: fewer frames than sampled when the replica shrank it to fit.
        frames={"count": len(used_times), "timestamps_s": used_times, "substituted": sampled.substituted},
        usage={"prompt_tokens": answer.result.prompt_tokens, "completion_tokens": answer.result.completion_tokens},
        served_by={"group": answer.served_by.group, "replica": answer.served_by.replica,
                   "precision": answer.served_by.precision},
        decode_s=round(decode_s, 4),
        inference_s=round(answer.inference_seconds or 0.0, 4),
        out_of_memory_retries=len(answer.oom_retries),
    ), thumbnails


def _events_of(parsed: Any, custom_schema: bool, segment: Segment) -> list[dict[str, Any]]:
    """The events of an answer: its ``events`` list (the default schema's, or a caller's schema of the same
    shape), each with a numeric ``time_s``; with any other schema of the caller's, the answer itself at the
    segment's start (its shape is the caller's)."""
    events = parsed.get("events") if isinstance(parsed, dict) else None
    if isinstance(events, list) or not custom_schema:
        return [event for event in events or [] if isinstance(event, dict) and _is_number(event.get("time_s"))]
    if parsed is None:
        return []
    return [{"time_s": segment.start_s, "description": json.dumps(parsed)[:MAX_EVENT_CHARS], "answer": parsed}]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _placed(event: dict[str, Any], segment: Segment, times: list[float], max_keys: int) -> dict[str, Any]:
    time_s = float(event["time_s"])
    adjusted = False
    if not segment.start_s <= time_s <= segment.end_s:
        if 0 <= time_s < segment.end_s - segment.start_s:
            time_s += segment.start_s  # counted from the segment's start
        else:
            time_s = min(max(time_s, segment.start_s), segment.end_s)
            adjusted = True
    nearest = _nearest(times, time_s)
    # The caller's own keys, at most max_keys of them (time_s and description count among them).
    own = dict(itertools.islice(((key, value) for key, value in event.items() if key not in ("time_s", "description")),
                                max(0, max_keys - 2)))
    placed = {
        **own,
        "time_s": round(time_s, 3),
        "description": str(event.get("description", ""))[:MAX_EVENT_CHARS],
        "frame_s": times[nearest],
        "frame": nearest,
        "segment": segment.index,
    }
    if adjusted:
        placed["time_adjusted"] = True
    return placed


def _nearest(times: list[float], time_s: float) -> int:
    position = bisect.bisect_left(times, time_s)
    candidates = [index for index in (position - 1, position) if 0 <= index < len(times)]
    return min(candidates, key=lambda index: abs(times[index] - time_s))


def timeline(segments: Iterable[SegmentResult]) -> list[dict[str, Any]]:
    """Every recorded segment's events, in the whole video's clock, in time order."""
    return in_time_order(event for result in segments for event in result.events)


def in_time_order(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(events, key=lambda event: (event["time_s"], event.get("segment", 0)))


# A timeline's text ("[0:01:05] a door opens") takes about 4 bytes a token in the BPE vocabularies served here; a
# prompt of more bytes than max_prompt_tokens times this is taken as too long and thinned unread. The margin makes
# that safe for any text of ordinary tokens; text made of unusually long tokens may be thinned a halving more than
# it needed, never sent too long (the replica still counts every prompt's tokens).
MAX_BYTES_PER_TOKEN = 16


def first_thinning(events: list[dict[str, Any]], max_prompt_tokens: int, max_thinnings: int) -> int:
    """The ``keep_every`` the final answer starts from: the first whose lines could fit ``max_prompt_tokens``
    by their bytes alone, so that a timeline far too long is never tokenized (each try is a round trip and a
    tokenization of the whole prompt)."""
    sizes = [len(_line(event).encode()) + 1 for event in events]
    keep_every = 1
    while keep_every < 2**max_thinnings and sum(sizes[::keep_every]) > max_prompt_tokens * MAX_BYTES_PER_TOKEN:
        keep_every *= 2
    return keep_every


def _line(event: dict[str, Any]) -> str:
    return f"[{clock(event['time_s'])}] {event['description']}"


def final_request(job: JobRecord, events: list[dict[str, Any]], keep_every: int, max_prompt_tokens: int) -> GenerationRequest:
    """The text-only request for the final answer, over every ``keep_every``-th event of the timeline."""
    kept = events[::keep_every]
    lines = [_line(event) for event in kept] or ["(no events were seen)"]
    prompt = (
        f"A video of {clock(job.duration_s)} was watched in {job.segments} parts. What was seen, by time:\n"
        + "\n".join(lines)
        + f"\n\nFrom these observations, answer: {job.question}"
    )
    return GenerationRequest(
        messages=(ChatMessage(role="user", content=(TextPart(prompt),)),),
        max_new_tokens=job.final_max_tokens,
        temperature=job.temperature,
        seed=job.seed,
        max_prompt_tokens=max_prompt_tokens,
        priority=BACKGROUND_PRIORITY,
    )


# Halvings of the timeline before the final answer gives up on fitting.
MAX_THINNINGS = 10


class VideoTimeline:
    """A job kind: each segment a list of timed events, the final answer the question over their timeline."""

    name = "video_timeline"

    def plan(self, job: JobRecord) -> list[Segment]:
        return job.plan()

    def segment_request(
        self, job: JobRecord, segment: Segment, frames: SampledVideo, max_prompt_tokens: int
    ) -> GenerationRequest:
        return segment_request(job, segment, frames, max_prompt_tokens)

    def segment_result(
        self, job: JobRecord, segment: Segment, frames: SampledVideo, answer: ReplicaAnswer, *, attempts: int,
        decode_s: float, settings: JobsSettings,
    ) -> tuple[SegmentResult, list[str]]:
        bounds = EventBounds(max_events=settings.max_events_per_segment, max_keys=settings.max_event_keys)
        return segment_result(job, segment, frames, answer, attempts=attempts, decode_s=decode_s, bounds=bounds)

    def final_requests(
        self, job: JobRecord, results: list[SegmentResult], max_prompt_tokens: int
    ) -> Iterator[tuple[GenerationRequest, int]]:
        """Over the whole timeline, then every other event (evenly over the video), and so on, from the first
        thinning whose bytes alone could fit."""
        events = timeline(results)
        keep_every = first_thinning(events, max_prompt_tokens, MAX_THINNINGS)
        while keep_every <= 2**MAX_THINNINGS:
            yield final_request(job, events, keep_every, max_prompt_tokens), len(events[::keep_every])
            keep_every *= 2


VIDEO_TIMELINE = VideoTimeline()
