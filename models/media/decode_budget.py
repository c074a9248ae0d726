"""What one request may decode: frames and pixels, counted as the decoder produces them, and a stop.

A request's cost in decoding is not its sampled frames but every frame the decoder produces to reach
them: a target 50 s behind a file's only keyframe costs 1,500 frames. Each request gets one budget,
shared by all its videos (``limits.max_decoded_frames`` and ``limits.max_decoded_pixels``); the sampler
charges every decoded frame to it, plans each target against a fair share of what is left, and takes the
nearest decodable frame (a keyframe, or the last frame decoded) for a target it cannot afford
(:mod:`models.media.video`). ``stop`` is set by the ingress when the request ends (the client left, or Serve
timed it out), and the decode stops at its next frame.
"""

import dataclasses
import logging
import threading

from models.media.inputs import DecodeBudgetExceededError, DecodeStoppedError

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class DecodeBudget:
    max_frames: int
    max_pixels: int
    targets_left: int = 0  # frames still to be sampled across the request's videos (0: unknown)
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    frames: int = 0
    pixels: int = 0

    def frames_left(self, frame_pixels: int) -> int:
        """Frames of ``frame_pixels`` each that the budget still holds."""
        return max(0, min(self.max_frames - self.frames, (self.max_pixels - self.pixels) // max(1, frame_pixels)))

    def charge(self, frame_pixels: int) -> None:
        """One decoded frame; the request's end stops the decode here."""
        if self.stop.is_set():
            logger.info("Decode stopped after %d frames (%d pixels): its request ended", self.frames, self.pixels)
            raise DecodeStoppedError(
                f"The decode was stopped after {self.frames} frames: its request ended (the client left or it timed out)"
            )
        self.frames += 1
        self.pixels += frame_pixels

    def share(self, frame_pixels: int, targets_here: int) -> tuple[int, int]:
        """(fair share, allowance) in frames for the next target: the share divides what is left among every
        target still to come; the allowance is what may be spent on it, leaving one frame for each later one."""
        left = self.frames_left(frame_pixels)
        targets = max(self.targets_left, targets_here)
        if left < 1:
            raise DecodeBudgetExceededError(
                f"The request's videos need more decoding than its budget: {self.frames} frames and {self.pixels} pixels "
                f"decoded of limits.max_decoded_frames ({self.max_frames}) and limits.max_decoded_pixels "
                f"({self.max_pixels}), with {targets} frames still to sample at {frame_pixels} pixels each"
            )
        return left // targets, max(1, left - (targets - 1))

    def target_taken(self) -> None:
        self.targets_left = max(0, self.targets_left - 1)
