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
replica that never sees one need not pay. Compiles run in a compile server of their own
(:mod:`models.decoding.grammar_server`), each under ``limits.max_schema_compile_s``: xgrammar cannot interrupt a
compile, and a 66-byte schema can take seconds (a ``pattern`` of 400 repeated groups: 2.5 s on the tiny
model's tokenizer). The server costs one more process on the replica's host (it imports xgrammar, and with it
torch: about 5 s to start, once, and 300 MB).
"""

import collections
import concurrent.futures
import dataclasses
import threading
from typing import Any

import torch

from models.decoding.grammar_server import (
    CompileAbandonedError,
    CompileFailedError,
    CompileTimeoutError,
    GrammarCompileProcess,
    SchemaCompileLimits,
)
from models.errors import InvalidParameterError
from models.requests import ResponseFormat

_CACHED_GRAMMARS = 64
_ANY_OBJECT = '{"type": "object"}'  # OpenAI's json_object: an object at the root, not any JSON value
_BRACKETS = frozenset("}]")


class GrammarCompiler:
    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: tuple[int, ...], *, limits: SchemaCompileLimits) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._stop_token_ids = list(stop_token_ids)
        self._limits = limits
        self._time_limit_s = limits.time_limit_s
        self._process: GrammarCompileProcess | None = None
        self._compiled: collections.OrderedDict[ResponseFormat, Any] = collections.OrderedDict()
        self._refused: collections.OrderedDict[ResponseFormat, InvalidParameterError] = collections.OrderedDict()
        self._compiling: dict[ResponseFormat, concurrent.futures.Future] = {}  # one compile per format at a time
        self._tiers: tuple[torch.Tensor, ...] | None = None
        self._lock = threading.Lock()  # guards the caches; submitters compile from their own threads

    def compile(self, response_format: ResponseFormat, stop: threading.Event | None = None) -> Any:
        """The format's grammar (compiled once); also, on the first call, the closing masks, so that neither
        costs the scheduler thread anything (decoding a 151k-token vocabulary takes seconds). ``stop`` is the
        request's: once set, its compile is abandoned (:class:`CompileAbandonedError`)."""
        compiled = self._compile(response_format, stop)
        self._closing_tiers()
        return compiled

    def check(self, response_format: ResponseFormat, stop: threading.Event | None = None) -> None:
        """Compile the format here (once; a refusal is kept) only to refuse what does not compile within the
        limits, for an engine that compiles its own grammars afterwards (vLLM): its compiler has no time limit."""
        self._compile(response_format, stop)

    def _compile(self, response_format: ResponseFormat, stop: threading.Event | None) -> Any:
        """Compiled once per format in the compile server (:mod:`models.decoding.grammar_server`), under a time limit:
        a slow schema costs only its own requests (they wait on its one compile), never another format's or
        the replica's generation. A refusal is kept too, so a hostile schema sent again costs nothing."""
        while True:
            with self._lock:
                for cache in (self._compiled, self._refused):
                    if response_format in cache:
                        cache.move_to_end(response_format)
                if response_format in self._compiled:
                    return self._compiled[response_format]
                if response_format in self._refused:
                    raise self._refused[response_format]
                process = self._ensure_process()
                pending = self._compiling.get(response_format)
                first = pending is None
                if first:
                    pending = self._compiling[response_format] = concurrent.futures.Future()
            if first:
                return self._compile_first(response_format, process, pending, stop)
            try:
                return pending.result()  # the same grammar, or the same InvalidParameterError
            except CompileAbandonedError:
                continue  # the request that was compiling it ended: compile it for this one

    def _compile_first(
        self, response_format: ResponseFormat, process: "GrammarCompileProcess", pending: concurrent.futures.Future,
        stop: threading.Event | None,
    ) -> Any:
        schema = _ANY_OBJECT if response_format.kind == "json_object" else response_format.schema_json
        try:
            compiled = process.compile(schema, stop)
        except (CompileFailedError, CompileTimeoutError) as error:
            if isinstance(error, CompileTimeoutError):
                message = (
                    f"response_format.json_schema.schema did not compile to a grammar within {self._time_limit_s:g} s "
                    "(limits.max_schema_compile_s) and was stopped; simplify it (long enums, high repetition counts "
                    "in patterns)"
                )
            else:
                message = f"response_format.json_schema.schema does not compile to a grammar: {error}"
            refused = InvalidParameterError("response_format", message)
            with self._lock:
                del self._compiling[response_format]
                _remember(self._refused, response_format, refused)
            pending.set_exception(refused)
            raise refused from None
        except BaseException as error:  # abandoned, the server lost or not started: not the schema's fault, not kept
            with self._lock:
                del self._compiling[response_format]
            pending.set_exception(error)
            raise
        with self._lock:
            del self._compiling[response_format]
            _remember(self._compiled, response_format, compiled)
        pending.set_result(compiled)
        return compiled

    def _ensure_process(self) -> "GrammarCompileProcess":
        if self._process is None:
            self._process = GrammarCompileProcess(self._tokenizer_info, self._limits)
        return self._process

    def _tokenizer_info(self) -> Any:
        import xgrammar

        return xgrammar.TokenizerInfo.from_huggingface(
            self._tokenizer, vocab_size=self._vocab_size, stop_token_ids=self._stop_token_ids
        )

    def close(self) -> None:
        """Stops the compile server, if one was started."""
        if self._process is not None:
            self._process.close()

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


def _remember(cache: collections.OrderedDict, key: Any, value: Any) -> None:
    cache[key] = value
    if len(cache) > _CACHED_GRAMMARS:
        cache.popitem(last=False)


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
