"""The parts of a long-video job without a server: the segment plan, the job's state machine, the job store on a
local folder and on a real S3 endpoint (moto's server), the events' placement in the whole video's clock, the
final answer's prompt, and a segment's window sampled from a real H.264 file."""

import dataclasses
import json
import time

import media_factory
import numpy as np
import pytest

from deployments.files.store import FileStore
from deployments.jobs.kinds.video_timeline import (
    DEFAULT_EVENTS_SCHEMA,
    EventBounds,
    clock,
    final_request,
    schema_json,
    segment_result,
    timeline,
)
from deployments.jobs.records import IllegalJobMoveError, JobRecord, JobState, Segment, new_job_id, plan_segments
from deployments.jobs.results import SegmentResult, SegmentState
from deployments.jobs.store import JobStore
from deployments.replica.protocol import ReplicaAnswer, ServedBy
from models.media import inputs as media
from models.media.request_shrink import RequestSize
from models.media.video import FrameSelection, SampledVideo, VideoInfo, VideoLimits, sample_video
from models.requests import GenerationResult

pytestmark = pytest.mark.unit

LIMITS = VideoLimits(max_duration_s=4 * 3600, max_source_pixels=10**8, max_frames=64, target_pixels_per_frame=10**8)


def _job(**changes) -> JobRecord:
    job = JobRecord(
        id=new_job_id(), owner="alice", file_id="file-" + "a" * 24, filename="night.mp4", file_sha256="ab" * 32,
        question="Who comes in?", duration_s=125.0, segment_s=60.0, frames_per_segment=4, fps=None,
        json_schema=schema_json(DEFAULT_EVENTS_SCHEMA), custom_schema=False, max_tokens=64, final_max_tokens=32,
        temperature=0.0, seed=None, segments=3, created_at=time.time(),
    )
    return dataclasses.replace(job, **changes)


def test_segments_cover_the_video_once_and_a_last_sliver_joins_the_segment_before():
    assert plan_segments(125.0, 60.0) == [Segment(0, 0.0, 60.0), Segment(1, 60.0, 120.0), Segment(2, 120.0, 125.0)]
    assert plan_segments(120.4, 60.0) == [Segment(0, 0.0, 60.0), Segment(1, 60.0, 120.4)]
    assert plan_segments(30.0, 60.0) == [Segment(0, 0.0, 30.0)]
    three_hours = plan_segments(3 * 3600.0, 60.0)
    assert len(three_hours) == 180 and three_hours[-1].end_s == 3 * 3600.0
    assert all(a.end_s == b.start_s for a, b in zip(three_hours, three_hours[1:]))


def test_a_job_moves_only_along_its_table():
    job = _job()
    running = job.moved(JobState.RUNNING)
    assert running.moved(JobState.FINALIZING).moved(JobState.SUCCEEDED).is_final
    assert job.moved(JobState.CANCELLED).is_final
    with pytest.raises(IllegalJobMoveError, match="from queued to succeeded"):
        job.moved(JobState.SUCCEEDED)
    with pytest.raises(IllegalJobMoveError, match="from cancelled to running"):
        job.moved(JobState.CANCELLED).moved(JobState.RUNNING)


@pytest.fixture
def job_store(tmp_path):
    """A job store on a local folder; tests/test_job_store_s3.py runs the same tests on S3."""
    return JobStore(FileStore((tmp_path / "files").as_uri()))


def _stored(index: int, state: SegmentState, run: str) -> SegmentResult:
    """A result that says which run recorded it (its text, or its error)."""
    if state is SegmentState.DONE:
        return SegmentResult(index=index, start_s=index * 60.0, end_s=index * 60.0 + 60, state=state, text=run)
    return SegmentResult(index=index, start_s=index * 60.0, end_s=index * 60.0 + 60, state=state, error=run)


def test_a_segment_is_recorded_once_and_a_job_is_its_owner_s(job_store):
    job = _job()
    job_store.create(job)

    assert job_store.stored_bytes(job) == 0
    first = job_store.put_segment(job, _stored(1, SegmentState.DONE, "first"), ["data:image/jpeg;base64,AA"])
    assert job_store.put_segment(job, _stored(1, SegmentState.DONE, "second")) is None
    second = job_store.put_segment(job, _stored(0, SegmentState.FAILED, "first"))
    assert first > 0 and second > 0
    assert job_store.stored_bytes(job) == first + second  # what a runner adopting the job counts, read from a listing
    assert job_store.thumbnail(job, 1, 0) == "data:image/jpeg;base64,AA"
    assert job_store.thumbnail(job, 1, 1) is None and job_store.thumbnail(job, 7, 0) is None

    assert job_store.recorded_indices(job) == {0, 1}
    assert job_store.segments(job) == [_stored(0, SegmentState.FAILED, "first"), _stored(1, SegmentState.DONE, "first")]
    assert [result.index for result in job_store.segments(job, [1])] == [1]
    assert job_store.get("alice", job.id) == job
    assert job_store.get("bob", job.id) is None
    assert job_store.get("alice", "../alice/jobs") is None
    assert [unfinished.id for unfinished in job_store.unfinished()] == [job.id]


def test_an_ended_job_leaves_the_unfinished_and_is_swept_after_its_time_to_live(job_store):
    job = _job()
    job_store.create(job)
    job_store.request_cancel(job)
    assert job_store.cancel_requested(job)
    ended = job.moved(JobState.CANCELLED, "cancelled", finished_at=time.time(), expires_at=time.time() - 1)
    job_store.save(ended)

    assert job_store.unfinished() == []
    assert job_store.sweep() == 1
    assert job_store.get("alice", job.id) is None and job_store.owned("alice") == []


def test_a_final_state_is_never_overwritten_and_the_scan_reads_no_ended_job(job_store):
    job = _job()
    job_store.create(job)
    running = job.moved(JobState.RUNNING, "running")
    cancelled = job.moved(JobState.CANCELLED, "cancelled", finished_at=time.time(), expires_at=time.time() + 60)
    assert job_store.save(cancelled) is True
    assert job_store.save(running) is False  # a runner that took the job meanwhile does not revive it
    assert job_store.get("alice", job.id).state is JobState.CANCELLED

    ended = []
    for _ in range(20):
        other = _job()
        job_store.create(other)
        job_store.save(other.moved(JobState.FAILED, "failed", finished_at=time.time(), expires_at=time.time() + 60))
        ended.append(other)
    live = _job()
    job_store.create(live)
    reads: list[str] = []
    cat_file = job_store._fs.cat_file
    job_store._fs.cat_file = lambda path, *args, **kwargs: reads.append(path) or cat_file(path, *args, **kwargs)
    try:
        assert [unfinished.id for unfinished in job_store.unfinished()] == [live.id]
        assert job_store.sweep() == 0  # nothing expired: the names say so, no record is read
    finally:
        job_store._fs.cat_file = cat_file
    assert [path.rsplit("/", 2)[-2:] for path in reads] == [[live.id, "job.json"]]


def test_writers_of_one_record_never_share_a_temporary_file(tmp_path):
    import concurrent.futures

    job_store = JobStore(FileStore((tmp_path / "files").as_uri()))
    job = _job()
    job_store.create(job)
    long_reason = "x" * 200_000
    versions = [job.moved(JobState.RUNNING, f"{index}{long_reason}") for index in range(16)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for _ in range(5):
            list(pool.map(job_store.save, versions))
            stored = job_store.get("alice", job.id)  # whole, never a mix or a truncation
            assert stored is not None and stored.reason.endswith(long_reason) and len(stored.reason) in (200_001, 200_002)
    assert not list((tmp_path / "files").rglob("*.partial"))


def _sampled(times: tuple[float, ...]) -> SampledVideo:
    info = VideoInfo(container="mov,mp4", codec="h264", width=8, height=8, rotation_degrees=0, duration_s=125.0,
                     duration_from="header", average_fps=2.0, has_audio=False)
    return SampledVideo(frames=np.zeros((len(times), 8, 8, 3), dtype=np.uint8), timestamps_s=times, info=info,
                        effective_fps=None, seeks=1, decoded_frames=len(times), decode_seconds=0.01)


def _answer(text: str) -> ReplicaAnswer:
    return ReplicaAnswer(
        result=GenerationResult(text=text, prompt_tokens=100, completion_tokens=20, finish_reason="stop"),
        served_by=ServedBy(group="cpu", replica="r1", precision="fp32", device="cpu"),
        inference_seconds=0.5,
        used=RequestSize(video_frames=4, images=0, max_pixels_per_frame=64),
    )


BOUNDS = EventBounds(max_events=32, max_keys=16)


def _recorded(*args, **kwargs) -> tuple[dict, list[str]]:
    """segment_result's result as it is stored and served (its JSON), and the thumbnails."""
    result, thumbnails = segment_result(*args, **kwargs)
    assert SegmentResult.from_json(result.to_json()) == result  # what the store reads back is what was recorded
    return result.to_json(), thumbnails


def test_events_are_placed_in_the_whole_video_s_clock_naming_the_nearest_frame_whose_thumbnail_is_stored_once():
    segment = Segment(1, 60.0, 120.0)
    text = '{"events": [{"time_s": 75, "description": "a door opens"}, {"time_s": 12.5, "description": "a dog"}, ' \
           '{"time_s": 900, "description": "out of range"}, {"time_s": "soon", "description": "no time"}]}'

    result, thumbnails = _recorded(_job(), segment, _sampled((67.5, 82.5, 97.5, 112.5)), _answer(text), attempts=1,
                                        decode_s=0.2, bounds=BOUNDS)

    events = result["events"]
    assert [(event["time_s"], event["frame_s"], event["frame"], event.get("time_adjusted", False)) for event in events] == [
        (72.5, 67.5, 0, False),  # counted from the segment's start
        (75.0, 67.5, 0, False),  # in the segment: stands
        (120.0, 112.5, 3, True),  # neither: the segment's nearest end
    ]  # in time order
    assert len(thumbnails) == 4 and all(thumbnail.startswith("data:image/jpeg;base64,") for thumbnail in thumbnails)
    assert "data:image" not in json.dumps(result)  # events name frames; no thumbnail is copied into the result
    assert all(event["segment"] == 1 for event in events) and result["thumbnail_frame"] == 2
    assert result["parse_error"] is None and result["served_by"]["group"] == "cpu"


def test_a_segment_keeps_at_most_the_bounded_events_and_keys_and_no_number_json_cannot_carry():
    many = [{"time_s": 1 + index % 50, "description": f"e{index}", **{f"k{key}": key for key in range(40)}}
            for index in range(5000)]
    many[-1]["extra"] = "INFINITE"
    text = json.dumps({"events": many}).replace('"INFINITE"', "1e999")

    result, _ = _recorded(_job(custom_schema=True), Segment(0, 0.0, 60.0), _sampled((15.0, 45.0)), _answer(text),
                               attempts=1, decode_s=0.1, bounds=EventBounds(max_events=8, max_keys=5))

    assert len(result["events"]) == 8 and result["events_dropped"] == 4992
    assert all(len(set(event) - {"frame_s", "frame", "segment", "time_adjusted"}) <= 5 for event in result["events"])
    assert result["answer"]["events"][-1]["extra"] is None  # 1e999: recorded as null
    json.dumps(result, allow_nan=False)  # strict JSON: what SSE and GET send
    infinite, _ = _recorded(_job(custom_schema=True), Segment(0, 0.0, 60.0), _sampled((15.0, 45.0)),
                                 _answer('{"score": Infinity, "deep": ' + "[" * 5000 + "]" * 5000 + "}"),
                                 attempts=1, decode_s=0.1, bounds=BOUNDS)
    assert infinite["answer"] is None and "not JSON" in infinite["parse_error"]


def test_an_answer_that_is_not_json_is_recorded_with_its_text_and_no_events():
    result, _ = _recorded(_job(), Segment(0, 0.0, 60.0), _sampled((15.0, 45.0)), _answer('{"events": [{"ti'),
                               attempts=2, decode_s=0.1, bounds=BOUNDS)

    assert result["state"] == "done" and result["events"] == [] and result["attempts"] == 2
    assert result["text"] == '{"events": [{"ti' and "not JSON" in result["parse_error"]


def test_the_final_prompt_lists_the_timeline_in_time_order_and_thins_evenly():
    segments = [SegmentResult(1, 3600.0, 3720.0, SegmentState.DONE, events=({"time_s": 3700.0, "description": "later", "segment": 1},)),
                SegmentResult(0, 0.0, 120.0, SegmentState.DONE, events=({"time_s": 65.0, "description": "first", "segment": 0},
                                                                          {"time_s": 80.0, "description": "second", "segment": 0}))]
    events = timeline(segments)
    assert [event["description"] for event in events] == ["first", "second", "later"]

    prompt = final_request(_job(), events, 1, 8192).messages[0].content[0].text
    assert "[0:01:05] first\n[0:01:20] second\n[1:01:40] later" in prompt and prompt.endswith("answer: Who comes in?")
    thinned = final_request(_job(), events, 2, 8192).messages[0].content[0].text
    assert "first" in thinned and "second" not in thinned and "later" in thinned


def test_a_timeline_far_past_the_prompt_limit_is_thinned_by_its_bytes_before_any_tokenization():
    from deployments.jobs.kinds.video_timeline import MAX_BYTES_PER_TOKEN, first_thinning

    events = [{"time_s": float(index), "description": "x" * 180, "segment": index // 32} for index in range(64_000)]
    keep_every = first_thinning(events, 4096, 10)
    kept_bytes = sum(len(f"[{clock(event['time_s'])}] {event['description']}") + 1 for event in events[::keep_every])
    assert kept_bytes <= 4096 * MAX_BYTES_PER_TOKEN < 2 * kept_bytes  # the first that could fit, no thinner
    assert keep_every == 256
    assert first_thinning(events[:10], 4096, 10) == 1  # one that may fit is tried as it is
    assert clock(3 * 3600 + 62) == "3:01:02"


def test_the_video_timeline_kind_offers_ever_thinner_final_requests_then_stops():
    from deployments.jobs.kinds import JOB_KINDS, kind_of
    from deployments.jobs.kinds.video_timeline import MAX_THINNINGS, VIDEO_TIMELINE

    events = tuple({"time_s": float(index), "description": f"e{index}", "segment": 0} for index in range(64))
    result = SegmentResult(index=0, start_s=0.0, end_s=64.0, state=SegmentState.DONE, events=events)
    job = _job()

    offered = list(VIDEO_TIMELINE.final_requests(job, [result], 8192))

    assert kind_of(job) is VIDEO_TIMELINE and list(JOB_KINDS) == ["video_timeline"]
    assert len(offered) == MAX_THINNINGS + 1
    assert [kept for _, kept in offered] == [64, 32, 16, 8, 4, 2, 1, 1, 1, 1, 1]
    assert "[0:00:01] e1" in offered[0][0].messages[0].content[0].text
    assert "[0:00:01] e1\n" not in offered[1][0].messages[0].content[0].text  # every other event
    assert VIDEO_TIMELINE.plan(job) == job.plan() and VIDEO_TIMELINE.plan(job)[0].index == 0
    with pytest.raises(ValueError, match="of kind 'audio', which this server does not run"):
        kind_of(_job(kind="audio"))


def test_a_window_is_sampled_inside_itself_in_the_whole_video_s_clock():
    # 120 s at 2 fps, a keyframe every 2 s: the window [60, 90) gets 4 frames at 63.75, 71.25, 78.75, 86.25 s.
    data = media_factory.video_bytes("mp4", num_frames=240, fps=2, gop=4, width=32, height=32)

    sampled = sample_video(data, FrameSelection(num_frames=4, start_s=60.0, end_s=90.0), LIMITS)
    by_rate = sample_video(data, FrameSelection(fps=0.2, start_s=100.0, end_s=200.0), LIMITS)

    assert sampled.timestamps_s == pytest.approx((64.0, 71.5, 79.0, 86.5), abs=0.51)
    assert all(60.0 <= t < 90.0 for t in sampled.timestamps_s)
    assert sampled.decoded_frames < 40  # sought to the window, not decoded from the start
    assert by_rate.timestamps_s == pytest.approx((100.0, 105.0, 110.0, 115.0), abs=0.51)  # the window ends with the video
    with pytest.raises(media.VideoWindowError, match="starts at 130 s; the video ends at 120 s"):
        sample_video(data, FrameSelection(num_frames=2, start_s=130.0, end_s=140.0), LIMITS)
    with pytest.raises(ValueError, match="end_s must be"):
        FrameSelection(num_frames=2, start_s=10.0, end_s=5.0)
