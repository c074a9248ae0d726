"""A segment's recorded result, typed: what the runner records, the store keeps as JSON and the API serves.

A result is ``done`` (the model answered; its answer may still not parse, ``parse_error`` says so) or ``failed`` (no
answer; ``error`` says why). Its JSON is the API's segment object, the same for every reader: the runner's summary,
the job page, the event stream and the final answer's timeline. :meth:`SegmentResult.from_json` reads what any
version of the runner stored (absent fields take their defaults).
"""

import dataclasses
import enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deployments.jobs.records import Segment


class SegmentState(str, enum.Enum):
    DONE = "done"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class SegmentResult:
    index: int
    start_s: float
    end_s: float
    state: SegmentState
    attempts: int = 1  # every try, those that waited for a group included
    events: tuple[dict[str, Any], ...] = ()  # in the whole video's clock, each naming its nearest frame
    error: str | None = None  # failed: why
    # Answered: the answer parsed (None when it is not JSON: parse_error), its text, and how it ended.
    answer: Any = None
    text: str | None = None
    parse_error: str | None = None
    finish_reason: str | None = None
    events_dropped: int = 0  # past jobs.max_events_per_segment
    thumbnail_frame: int | None = None  # the segment's middle frame, for a timeline's row
    frames: dict[str, Any] | None = None  # what the model saw: count, timestamps_s, substituted
    usage: dict[str, int] | None = None
    served_by: dict[str, str] | None = None
    decode_s: float = 0.0
    inference_s: float = 0.0
    out_of_memory_retries: int = 0
    store_bytes_fetched: int | None = None  # from an object store; None for a local file or cached frames
    decoded_on: str | None = None  # the node that decoded the frames
    file_gone: bool = False  # the runner's alone, never stored: the job's file went, so every other segment would fail

    @property
    def answered(self) -> bool:
        return self.state is SegmentState.DONE

    def to_json(self) -> dict[str, Any]:
        head = {"index": self.index, "start_s": self.start_s, "end_s": self.end_s, "state": self.state.value}
        if not self.answered:
            return {**head, "error": self.error, "events": list(self.events), "attempts": self.attempts}
        return {
            **head,
            "answer": self.answer,
            "text": self.text,
            "parse_error": self.parse_error,
            "finish_reason": self.finish_reason,
            "events": list(self.events),
            "events_dropped": self.events_dropped,
            "thumbnail_frame": self.thumbnail_frame,
            "frames": self.frames,
            "usage": self.usage,
            "served_by": self.served_by,
            "attempts": self.attempts,
            "timings": {"decode_s": self.decode_s, "inference_s": self.inference_s},
            "out_of_memory_retries": self.out_of_memory_retries,
            "store_bytes_fetched": self.store_bytes_fetched,
            "decoded_on": self.decoded_on,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SegmentResult":
        names = {field.name for field in dataclasses.fields(cls)} - {"state", "events", "file_gone", "decode_s", "inference_s"}
        timings = data.get("timings") or {}
        return cls(
            **{name: data[name] for name in names if name in data},
            state=SegmentState(data["state"]),
            events=tuple(data.get("events") or ()),
            decode_s=timings.get("decode_s", 0.0),
            inference_s=timings.get("inference_s", 0.0),
        )


def failed_segment(segment: "Segment", reason: str, *, attempts: int, file_gone: bool = False) -> SegmentResult:
    """A segment recorded without an answer: ``reason`` says why (its frames, the groups, its attempts)."""
    return SegmentResult(index=segment.index, start_s=segment.start_s, end_s=segment.end_s, state=SegmentState.FAILED,
                         attempts=attempts, error=reason, file_gone=file_gone)
