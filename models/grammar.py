"""Structured output: a ``response_format`` becomes a grammar that masks, at every step, each token that
would break it (xgrammar, what vLLM and SGLang use).

:class:`GrammarCompiler` is one per loaded model (its tokenizer and logits width); it compiles a format
once and keeps it (``json_object`` is the schema ``{"type": "object"}``, ``json_schema`` a grammar from
the schema; both without free whitespace, so a model cannot spend its tokens on blanks). A schema that
xgrammar cannot compile is an :class:`~models.errors.InvalidParameterError` on ``response_format``,
raised before the request is queued. :class:`GrammarState` is one request's matcher: it masks the logits
(on their own device) and accepts the sampled token; the end token is allowed only once the answer is
complete, so an answer that ends by itself always parses.

**Closing within max_tokens.** A grammar alone does not make an answer end: a model (a random-weight
one surely) may write a string forever, and at ``max_tokens`` the JSON would be cut (vLLM returns it
so). Once a request's remaining tokens are down to its closing reserve (a quarter of ``max_tokens``,
8 to 64 tokens), among the tokens the grammar allows the sampler keeps only the most closing tier: the
end token; inside a string, tokens that close it (``"``, ``"}``, ...); outside, tokens made only of
``}`` and ``]``, else ``,`` (which a required key may need). Where none of these is allowed (a key the
schema requires, the digits after a minus) the model chooses as before. Measured on the tiny random model at temperature 1: 6 of 20 ``json_object`` answers
and 10 of 20 event-schema answers parsed within 256 tokens without it; 20 and 20 with it.

xgrammar is imported on the first structured request: it costs about 3.6 s and 100 MB here, which a
replica that never sees one need not pay.
"""

import collections
import concurrent.futures
import dataclasses
import threading
from typing import Any

import torch

from models.errors import InvalidParameterError
from models.requests import ResponseFormat

_CACHED_GRAMMARS = 64
_ANY_OBJECT = '{"type": "object"}'  # OpenAI's json_object: an object at the root, not any JSON value
_BRACKETS = frozenset("}]")


class GrammarCompiler:
    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: tuple[int, ...]) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._stop_token_ids = list(stop_token_ids)
        self._compiler: Any = None
        self._compiled: collections.OrderedDict[ResponseFormat, Any] = collections.OrderedDict()
        self._compiling: dict[ResponseFormat, concurrent.futures.Future] = {}  # one compile per format at a time
        self._tiers: tuple[torch.Tensor, ...] | None = None
        self._lock = threading.Lock()  # guards the cache; submitters compile from their own threads

    def compile(self, response_format: ResponseFormat) -> Any:
        """The format's grammar (compiled once); also, on the first call, the closing masks, so that neither
        costs the scheduler thread anything (decoding a 151k-token vocabulary takes seconds)."""
        compiled = self._compile(response_format)
        self._closing_tiers()
        return compiled

    def _compile(self, response_format: ResponseFormat) -> Any:
        """Compiled once per format, outside the cache's lock: a slow schema delays only the requests that
        carry it (they wait on its one compile), never another format's."""
        with self._lock:
            if response_format in self._compiled:
                self._compiled.move_to_end(response_format)
                return self._compiled[response_format]
            compiler = self._ensure_compiler()  # before a compile is registered: a failed import leaves none waiting
            pending = self._compiling.get(response_format)
            first = pending is None
            if first:
                pending = self._compiling[response_format] = concurrent.futures.Future()
        if not first:
            return pending.result()  # the same grammar, or the same InvalidParameterError
        try:
            schema = _ANY_OBJECT if response_format.kind == "json_object" else response_format.schema_json
            compiled = compiler.compile_json_schema(schema, any_whitespace=False)
        except Exception as error:  # noqa: BLE001 - xgrammar reports a bad schema as RuntimeError or ValueError
            reason = str(error).splitlines()[-1].split("] ", 1)[-1][:300]
            refused = InvalidParameterError(
                "response_format", f"response_format.json_schema.schema does not compile to a grammar: {reason}"
            )
            with self._lock:
                del self._compiling[response_format]
            pending.set_exception(refused)
            raise refused from None
        with self._lock:
            del self._compiling[response_format]
            self._compiled[response_format] = compiled
            if len(self._compiled) > _CACHED_GRAMMARS:
                self._compiled.popitem(last=False)
        pending.set_result(compiled)
        return compiled

    def _ensure_compiler(self) -> Any:
        if self._compiler is None:
            import xgrammar

            info = xgrammar.TokenizerInfo.from_huggingface(
                self._tokenizer, vocab_size=self._vocab_size, stop_token_ids=self._stop_token_ids
            )
            self._compiler = xgrammar.GrammarCompiler(info, max_threads=1)
        return self._compiler

    def new_state(self, compiled: Any) -> "GrammarState":
        return GrammarState(compiled, self._vocab_size, self._closing_tiers())

    def _closing_tiers(self) -> "ClosingTiers":
        """Every token's text and the closing masks (see the module's note); decoded once per model."""
        with self._lock:
            if self._tiers is None:
                size = self._vocab_size
                texts = [self._tokenizer.decode([token]) for token in range(min(size, len(self._tokenizer)))]
                texts += [""] * (size - len(texts))
                end = torch.zeros(size, dtype=torch.bool)
                end[[token for token in self._stop_token_ids if token < size]] = True

                def mask(test) -> torch.Tensor:
                    return torch.tensor([bool(text) and test(text) for text in texts], dtype=torch.bool)

                self._tiers = ClosingTiers(
                    texts=texts,
                    in_string=(end, mask(lambda text: text[0] == '"' and set(text[1:]) <= _BRACKETS)),
                    outside=(end, mask(lambda text: set(text) <= _BRACKETS), mask(lambda text: text == ",")),
                )
            return self._tiers


@dataclasses.dataclass(frozen=True)
class ClosingTiers:
    texts: list[str]  # each token's text
    in_string: tuple[torch.Tensor, ...]  # masks, most closing first, while a string is open
    outside: tuple[torch.Tensor, ...]


class GrammarState:
    """One request's place in its grammar, and whether a JSON string is open there."""

    def __init__(self, compiled: Any, vocab_size: int, closing_tiers: ClosingTiers) -> None:
        import xgrammar

        self._xgrammar = xgrammar
        self._matcher = xgrammar.GrammarMatcher(compiled)
        self._bitmask = xgrammar.allocate_token_bitmask(1, vocab_size)
        self._tiers = closing_tiers
        self._in_string = False
        self._escaped = False

    def mask(self, logits: torch.Tensor, *, closing: bool = False) -> None:
        """Set every token the grammar does not allow next to ``-inf``, in place (``logits``: ``(vocab,)``);
        ``closing``: keep only the most closing tier the grammar allows (see the module's note)."""
        self._matcher.fill_next_token_bitmask(self._bitmask)
        self._xgrammar.apply_token_bitmask_inplace(logits[None], self._bitmask.to(logits.device))
        if not closing:
            return
        allowed = torch.isfinite(logits)
        for tier in self._tiers.in_string if self._in_string else self._tiers.outside:
            keep = allowed & tier.to(logits.device)
            if bool(keep.any()):
                logits.masked_fill_(~keep, float("-inf"))
                return

    def accept(self, token: int) -> None:
        if not self._matcher.accept_token(token):
            raise RuntimeError(f"the grammar refused token {token}, which its own mask allowed")
        for character in self._tiers.texts[token]:
            if self._escaped:
                self._escaped = False
            elif self._in_string and character == "\\":
                self._escaped = True
            elif character == '"':
                self._in_string = not self._in_string

    @property
    def complete(self) -> bool:
        return self._matcher.is_terminated()
