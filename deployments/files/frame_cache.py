"""Decoded frames of uploaded files, kept in the ingress: a second question about a file skips its download,
demux and decode.

Keyed by the owner (an API key's hash: a hit must not tell one key that another asked about the same
bytes), the file's content hash and everything that decides which frames come out (how many or at
what fps, the frame cap, the pixel budget per frame), so a question that samples differently decodes
again. Bounded in bytes, least recently used first out; a video larger than the whole bound is not kept.
Each ingress replica has its own; the cache is a speed-up, never the only copy.
"""

import collections
import dataclasses
import threading

from models.media.video import FrameSelection, SampledVideo, VideoLimits


@dataclasses.dataclass(frozen=True)
class FrameCacheKey:
    owner: str
    sha256: str
    num_frames: int | None
    fps: float | None
    start_s: float  # the window sampled (a long video's segment); 0 and None: the whole video
    end_s: float | None
    max_frames: int
    target_pixels_per_frame: int

    @classmethod
    def of(cls, owner: str, sha256: str, selection: FrameSelection, limits: VideoLimits) -> "FrameCacheKey":
        """The key of a file's frames as ``selection`` samples them under ``limits``: the same for a request and a job
        segment. ``owner``: a hit must not tell one key that another asked about the same bytes."""
        return cls(
            owner=owner, sha256=sha256, num_frames=selection.num_frames, fps=selection.fps, start_s=selection.start_s,
            end_s=selection.end_s, max_frames=limits.max_frames, target_pixels_per_frame=limits.target_pixels_per_frame,
        )


@dataclasses.dataclass
class FrameCacheStats:
    hits: int = 0
    misses: int = 0
    entries: int = 0
    bytes: int = 0
    max_bytes: int = 0


class FrameCache:
    def __init__(self, max_bytes: int) -> None:
        self._entries: collections.OrderedDict[FrameCacheKey, SampledVideo] = collections.OrderedDict()
        self._lock = threading.Lock()  # requests decode in worker threads
        self.stats = FrameCacheStats(max_bytes=max_bytes)

    def get(self, key: FrameCacheKey) -> SampledVideo | None:
        with self._lock:
            sampled = self._entries.get(key)
            if sampled is None:
                self.stats.misses += 1
                return None
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return sampled

    def put(self, key: FrameCacheKey, sampled: SampledVideo) -> None:
        size = sampled.frames.nbytes
        with self._lock:
            if size > self.stats.max_bytes or key in self._entries:
                return
            self._entries[key] = sampled
            self.stats.bytes += size
            while self.stats.bytes > self.stats.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.stats.bytes -= evicted.frames.nbytes
            self.stats.entries = len(self._entries)
