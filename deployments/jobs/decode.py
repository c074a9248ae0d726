"""A segment's frames, decoded by a Ray task wherever Ray places it: read from the store (ranges of an S3
object, a local file in place), seeking straight to the segment's window, under a decode budget.

The task returns the frames, or the reason they cannot be had (a file gone, a window past the end, a
corrupt stretch) as text: the runner records that segment as failed and goes on. Ray retries the task when
its worker dies (``max_retries``).
"""

import dataclasses
import logging
import os
import time

import ray

from deployments.files.service import sample_from_store
from deployments.files.store import FileRecord, FileStore
from deployments.replica.background import lower_priority
from models.media.decode_budget import DecodeBudget
from models.media.inputs import MediaError
from models.media.video import FrameSelection, SampledVideo, VideoLimits

logger = logging.getLogger(__name__)

DECODE_TASK_RETRIES = 2


@dataclasses.dataclass(frozen=True)
class DecodedSegment:
    """A segment's frames, or why there are none; how long the decode took, the bytes it fetched from an object
    store (``None`` for a local file, read in place, or frames from the cache), and the node that decoded it."""

    frames: SampledVideo | None
    why_not: str | None
    seconds: float
    fetched_bytes: int | None
    node_ip: str | None
    file_gone: bool = False  # the file is not in the store any more: every other segment would fail alike


@ray.remote
def start_decode_worker() -> int:
    """Nothing but a worker with this module imported (PyAV, the decoders), left idle for the first segment's decode:
    a fresh worker costs about 1.3 s to start here, which the first job would otherwise wait. Its pid."""
    lower_priority()
    return os.getpid()


@ray.remote(max_retries=DECODE_TASK_RETRIES)
def decode_segment(
    store_url: str,
    storage_options: dict,
    record: FileRecord,
    selection: FrameSelection,
    limits: VideoLimits,
    max_decoded_frames: int,
    max_decoded_pixels: int,
) -> DecodedSegment:
    """The segment's frames; the decode budget is the one a request for these frames gets
    (``limits.max_decoded_frames`` and ``max_decoded_pixels``)."""
    lower_priority()  # a worker that decodes segments is background work, now and for its next tasks
    started = time.perf_counter()
    node_ip = ray.util.get_node_ip_address()
    targets = selection.num_frames or limits.max_frames
    budget = DecodeBudget(max_frames=max_decoded_frames, max_pixels=max_decoded_pixels, targets_left=targets)
    fetched: list[int] = []
    try:
        sampled = sample_from_store(FileStore(store_url, storage_options), record, selection, limits, budget, fetched)
        return DecodedSegment(sampled, None, time.perf_counter() - started, fetched[0] if fetched else None, node_ip)
    except FileNotFoundError:  # the file went: deleted, or swept at its time to live
        return DecodedSegment(None, f"{record.id} is not in the store any more (deleted or expired)",
                              time.perf_counter() - started, None, node_ip, file_gone=True)
    except MediaError as error:
        return DecodedSegment(None, f"{type(error).__name__}: {error}", time.perf_counter() - started, None, node_ip)
