"""One request's answer, token by token: its text pieces, where it ends and why, its log-probabilities.

The scheduler pushes each sampled token; :meth:`AnswerBuilder.push` says what text may be sent now
(complete characters, nothing that could still be the start of a stop string), the log-probabilities
of the tokens that text came from, and the :class:`~models.requests.GenerationResult` once the answer
has ended:

* ``"stop"``: an end token (unless ``ignore_eos``), a stop string (the text ends just before it), or a
  structured answer its grammar has completed;
* ``"length"``: ``max_tokens`` tokens.
"""

import dataclasses
from typing import Any

from models.decoding.detokenizer import IncrementalDetokenizer
from models.decoding.stop_strings import StopStringMatcher
from models.decoding.token_sampler import SampledLogprobs
from models.requests import FinishReason, GenerationRequest, GenerationResult, TextDelta, TokenLogprob


@dataclasses.dataclass(frozen=True)
class Pushed:
    delta: TextDelta | None  # text (and its tokens' log-probabilities) to send now
    result: GenerationResult | None  # the answer, once it has ended


class AnswerBuilder:
    def __init__(self, tokenizer: Any, request: GenerationRequest, *, end_ids: frozenset[int], prompt_tokens: int) -> None:
        self._tokenizer = tokenizer
        self._request = request
        self._end_ids = end_ids
        self._prompt_tokens = prompt_tokens
        self._detokenizer = IncrementalDetokenizer(tokenizer)
        self._stop = StopStringMatcher(request.options.stop) if request.options.stop else None
        self._pending: list[TokenLogprob] = []  # tokens whose text is not sent yet
        self._all_logprobs: list[TokenLogprob] = []
        self._sent: list[str] = []
        self.generated = 0

    def push(self, token: int, sampled: SampledLogprobs | None = None, *, grammar_complete: bool = False) -> Pushed:
        options = self._request.options
        self.generated += 1
        ended_by_token = token in self._end_ids and not options.ignore_eos
        if ended_by_token:
            self._detokenizer.ids.append(token)
            piece = ""
        else:
            piece = self._detokenizer.push(token)
        if sampled is not None:
            self._pending.append(self._named(token, sampled))
        reason: FinishReason | None = None
        if ended_by_token or grammar_complete:
            reason = "stop"
        elif self.generated >= self._request.max_new_tokens:
            reason = "length"
        if reason is not None:
            piece += self._detokenizer.text()[self.sent_chars + len(piece) + self._held_chars() :]
        if self._stop is not None:
            released = self._stop.feed(piece)
            piece = released.text
            if released.stopped:
                reason = "stop"
            elif reason is not None:
                piece += self._stop.flush()
        delta = None
        if piece or (reason is not None and self._pending):
            delta = TextDelta(piece, tuple(self._pending), self.generated)
            self._all_logprobs.extend(self._pending)
            self._pending = []
            self._sent.append(piece)
        if reason is None:
            return Pushed(delta, None)
        result = GenerationResult(
            text="".join(self._sent),
            prompt_tokens=self._prompt_tokens,
            completion_tokens=self.generated,
            finish_reason=reason,
            logprobs=tuple(self._all_logprobs) if options.logprobs else None,
        )
        return Pushed(delta, result)

    @property
    def sent_chars(self) -> int:
        """Characters of answer already sent to the client."""
        return sum(map(len, self._sent))

    def _held_chars(self) -> int:
        """Characters the stop-string matcher holds back: decoded already, not sent yet."""
        return self._stop.held_chars if self._stop is not None else 0

    def _named(self, token: int, sampled: SampledLogprobs) -> TokenLogprob:
        decode = self._tokenizer.decode
        return TokenLogprob(
            token=decode([token]),
            logprob=sampled.logprob,
            top=tuple((decode([alternative]), logprob) for alternative, logprob in sampled.top),
        )
