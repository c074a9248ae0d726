"""Stop strings (OpenAI's ``stop``): the answer ends just before the first one, also when streamed.

Text arrives in pieces that need not line up with a stop string: ``"\\n\\nQ"`` may come as ``"\\n"`` then
``"\\nQ"``. :class:`StopStringMatcher` releases text only once it can no longer be the start of a stop
string; it holds back at most the longest stop string less one character.

Example, ``stop=["\\n\\n"]``: ``feed("Hello\\n")`` releases ``"Hello"`` and holds ``"\\n"``; ``feed("\\nWorld")``
finds the stop string and releases nothing more; the answer is ``"Hello"``.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Released:
    text: str  # safe to send: it is part of the answer whatever comes next
    stopped: bool  # a stop string was found; ``text`` ends just before it and nothing follows


class StopStringMatcher:
    def __init__(self, stop: tuple[str, ...]) -> None:
        self._stop = tuple(stop)
        self._hold = max((len(string) for string in self._stop), default=1) - 1
        self._pending = ""
        self.stopped = False

    def feed(self, piece: str) -> Released:
        if self.stopped:
            return Released("", True)
        self._pending += piece
        found = [index for index in (self._pending.find(string) for string in self._stop) if index >= 0]
        if found:
            self.stopped = True
            text, self._pending = self._pending[: min(found)], ""
            return Released(text, True)
        keep = self._held_tail()
        text = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep :]
        return Released(text, False)

    @property
    def held_chars(self) -> int:
        return len(self._pending)

    def flush(self) -> str:
        """At the end of the answer (its token limit, its end token): what was held back is text after all."""
        text, self._pending = ("" if self.stopped else self._pending), ""
        return text

    def _held_tail(self) -> int:
        """Characters at the end of the pending text that could begin a stop string."""
        for length in range(min(self._hold, len(self._pending)), 0, -1):
            tail = self._pending[-length:]
            if any(string.startswith(tail) for string in self._stop):
                return length
        return 0
