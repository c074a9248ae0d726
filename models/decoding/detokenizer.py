"""Token ids to text one token at a time, for streaming.

A token may end in the middle of a UTF-8 character, and a tokenizer may change how it
joins the last tokens once it sees the next one. So each step decodes a short window
(from ``prefix_offset``) twice, with and without the new tokens, and sends only the
text that is new and complete (no trailing replacement character). This is the
windowed scheme TGI and vLLM use; the joined pieces equal decoding all ids at once.
"""

from typing import Any


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_id: int) -> str:
        """Add one generated token; the text it completes (often one word piece, sometimes empty)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self._prefix_offset : self._read_offset])
        text = self._decode(self.ids[self._prefix_offset :])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
            return text[len(prefix) :]
        return ""

    def text(self) -> str:
        return self._decode(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True) if ids else ""
