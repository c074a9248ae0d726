"""A per-key rate over a sliding minute, for actions that cost the server long after the request
(``jobs.max_job_creations_per_minute``): each ingress replica counts its own."""

import collections
import math
import time

from deployments.errors import ApiError

_WINDOW_S = 60.0


class PerKeyRate:
    def __init__(self, per_minute: int, *, setting: str, what: str) -> None:
        self._per_minute = per_minute
        self._setting = setting
        self._what = what
        self._taken: dict[str, collections.deque[float]] = {}

    def take(self, owner: str) -> None:
        """Count one for ``owner``; a 429 with ``Retry-After`` when the minute's are spent."""
        now = time.monotonic()
        taken = self._taken.setdefault(owner, collections.deque())
        while taken and now - taken[0] >= _WINDOW_S:
            taken.popleft()
        if len(taken) >= self._per_minute:
            wait_s = max(1, math.ceil(_WINDOW_S - (now - taken[0])))
            raise ApiError(429, f"This key has {self._what} {len(taken)} times in the last minute; the limit is "
                           f"{self._per_minute} ({self._setting}). Retry in {wait_s} s", code="rate_limited",
                           headers={"Retry-After": str(wait_s)})
        taken.append(now)

    def give_back(self, owner: str) -> None:
        """Uncount the last one (the action was refused for another reason, and cost nothing)."""
        taken = self._taken.get(owner)
        if taken:
            taken.pop()
