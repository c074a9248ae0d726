"""Pick each row's next token from its logits, with that request's own settings and seed.

In order, on this row's logits (each step only when the request asked for it, vLLM's order):

1. log-probabilities of the model's own distribution, for ``logprobs`` (before anything below);
2. ``logit_bias``; ``repetition_penalty`` over the prompt and the answer so far (a positive logit is
   divided by it, a negative one multiplied); ``frequency_penalty`` and ``presence_penalty`` over the
   answer so far (OpenAI's: minus count x frequency, minus presence once seen);
3. the end tokens masked while fewer than ``min_tokens`` were generated;
4. the structured-output grammar's mask (:mod:`models.decoding.grammar`), closing the answer once the remaining
   tokens are down to the closing reserve;
5. greedy at temperature 0; otherwise the logits over the temperature, cut to ``top_k``, ``top_p`` and
   ``min_p``, and sampled from a ``torch.Generator`` seeded with the request's seed, so a seeded request
   gives the same answer whatever else shares its batch.
"""

import dataclasses

import torch

from models.decoding.grammar import GrammarState
from models.requests import GenerationRequest


@dataclasses.dataclass(frozen=True)
class SampledLogprobs:
    """The chosen token's log-probability and the ``top`` most likely tokens', as ids (the caller names them)."""

    logprob: float
    top: tuple[tuple[int, float], ...]


class TokenSampler:
    """One request's sampling state."""

    def __init__(
        self,
        request: GenerationRequest,
        device: torch.device,
        *,
        prompt_ids: torch.Tensor | None = None,
        end_ids: frozenset[int] = frozenset(),
        grammar: GrammarState | None = None,
    ) -> None:
        self._temperature = request.temperature
        self._options = request.options
        self._end_ids = torch.tensor(sorted(end_ids), dtype=torch.long) if end_ids else None
        self._bias_ids = torch.tensor([token for token, _ in self._options.logit_bias], dtype=torch.long)
        self._bias_values = torch.tensor([bias for _, bias in self._options.logit_bias], dtype=torch.float32)
        self._grammar = grammar
        self._max_new_tokens = request.max_new_tokens
        self._closing_reserve = min(64, max(8, request.max_new_tokens // 4))  # see models.decoding.grammar
        self._generated: list[int] = []
        self._prompt_ids = prompt_ids.flatten().cpu() if prompt_ids is not None else torch.empty(0, dtype=torch.long)
        self._generator: torch.Generator | None = None
        if self._temperature > 0:
            self._generator = torch.Generator(device=device)
            if request.seed is not None:
                self._generator.manual_seed(request.seed)
            else:
                self._generator.seed()

    @property
    def grammar_complete(self) -> bool:
        return self._grammar is not None and self._grammar.complete

    def next_token(self, logits: torch.Tensor) -> tuple[int, SampledLogprobs | None]:
        """``logits``: this row's ``(vocab,)`` scores for the next position (not kept, may be changed)."""
        options = self._options
        logprobs = torch.log_softmax(logits.float(), dim=-1) if options.logprobs else None
        scores = self._shaped(logits)
        if self._generator is None:
            token = int(torch.argmax(scores))
        else:
            token = int(torch.multinomial(self._probabilities(scores), 1, generator=self._generator))
        self._generated.append(token)
        if self._grammar is not None:
            self._grammar.accept(token)
        if logprobs is None:
            return token, None
        top: tuple[tuple[int, float], ...] = ()
        if options.top_logprobs:
            values, ids = torch.topk(logprobs, options.top_logprobs)
            top = tuple(zip(ids.tolist(), values.tolist()))
        return token, SampledLogprobs(logprob=float(logprobs[token]), top=top)

    def _shaped(self, logits: torch.Tensor) -> torch.Tensor:
        options = self._options
        shaping = (
            options.logit_bias
            or options.repetition_penalty != 1.0
            or options.frequency_penalty
            or options.presence_penalty
            or (options.min_tokens and len(self._generated) < options.min_tokens)
            or self._grammar is not None
        )
        if not shaping:
            return logits
        scores = logits.float().clone()
        if options.logit_bias:
            scores[self._bias_ids.to(scores.device)] += self._bias_values.to(scores.device)
        if options.repetition_penalty != 1.0:
            generated = torch.tensor(self._generated, dtype=torch.long)
            seen = torch.cat([self._prompt_ids, generated]).unique().to(scores.device)
            values = scores[seen]
            scores[seen] = torch.where(values > 0, values / options.repetition_penalty, values * options.repetition_penalty)
        if (options.frequency_penalty or options.presence_penalty) and self._generated:
            generated = torch.tensor(self._generated, dtype=torch.long)
            counts = torch.bincount(generated, minlength=scores.numel())[: scores.numel()].to(scores.device, scores.dtype)
            scores -= counts * options.frequency_penalty + (counts > 0).to(scores.dtype) * options.presence_penalty
        if self._end_ids is not None and len(self._generated) < options.min_tokens:
            scores[self._end_ids.to(scores.device)] = float("-inf")
        if self._grammar is not None:
            remaining = self._max_new_tokens - len(self._generated)
            self._grammar.mask(scores, closing=remaining <= self._closing_reserve)
        return scores

    def _probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        options = self._options
        scores = scores.float() / self._temperature
        if 0 < options.top_k < scores.numel():
            kth = torch.topk(scores, options.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probabilities = torch.softmax(scores, dim=-1)
        if options.top_p < 1.0:
            ordered, order = torch.sort(probabilities, descending=True)
            # Keep the smallest set whose mass reaches top_p: a token goes when the mass before it already does.
            drop = (ordered.cumsum(-1) - ordered) >= options.top_p
            probabilities = probabilities.scatter(0, order[drop], 0.0)
        if options.min_p > 0:
            probabilities = probabilities.masked_fill(probabilities < options.min_p * probabilities.max(), 0.0)
        return probabilities
