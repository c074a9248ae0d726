"""The engine contract (:mod:`models.engines.contract`) served by vLLM's async engine.

- **submit** renders the prompt and the sampling parameters in the caller's thread (a bad option or input is
  refused there, by name), then hands the request to vLLM's loop; a replica holding ``max_waiting`` requests
  answers :class:`~models.errors.ReplicaBusyError`, as the transformers engine does.
- **stream**: vLLM's deltas become ``opened`` (at the first output, with the prompt's token count), ``text``
  pieces and ``finished``; a prompt vLLM cannot take (longer than ``max_model_len``) fails with
  :class:`~models.errors.PromptTooLongError` naming the figures, never a hang.
- **cancel**: a watcher on vLLM's loop aborts, inside vLLM, every request whose ``stop`` is set, whether it is
  running or still waiting in vLLM's queue; a request checks its ``stop`` before it reaches vLLM and at each
  output too, so a stop set before vLLM registered it (an abort that found nothing) still ends it.
- **structured output**: a schema is compiled first in our compile server (:class:`~models.decoding.grammar.GrammarCompiler`:
  ``limits.max_schema_compile_s``, its concurrency and memory bounds, refusals kept), so a schema that would hold
  vLLM's own compiler, which has no time limit, is refused before vLLM sees it.
- **describe**: our :class:`~models.engines.contract.EngineStats` plus vLLM's own figures (KV-cache use, running and
  waiting, prefix-cache and processor-cache hit rates).
- **media**: each item goes to vLLM with our media identity (``multi_modal_uuids``); the engine keeps a record of
  the identities it handed over, bounded as vLLM's processor cache is, which it names to the affinity router.
"""

import asyncio
import dataclasses
import itertools
import logging
import threading
from typing import Any

from vllm.v1.engine.exceptions import EngineDeadError

from memory.admission import FP32_BYTES, RequestCost
from models.decoding.grammar import GrammarCompiler
from models.engines.contract import EngineCapabilities, EngineStats, GuardedSink, RequestSink, describe_engine
from models.engines.vllm.async_llm import VllmRuntime
from models.engines.vllm.inputs import PromptBuilder, token_logprobs
from models.engines.vllm.options import HONOURED_OPTIONS
from models.errors import PromptTooLongError, ReplicaBusyError, SchedulerClosedError, check_prompt_tokens
from models.fault_injection import raise_if_simulated_broken_link
from models.media.media_cache import MediaCache
from models.requests import GenerationRequest, GenerationResult, ImagePart, ResponseFormat, TextDelta

logger = logging.getLogger(__name__)

_STOP_POLL_S = 0.05


@dataclasses.dataclass
class _Ticket:
    request: GenerationRequest
    sink: RequestSink
    stop: threading.Event
    aborted: bool = False
    aborted_by_run: bool = False  # the request's own abort, sent once vLLM had it (the watcher's may have come before)
    ended: bool = False  # the sink heard its last event (finished, failed or cancelled)

    def fail(self, error: BaseException) -> None:
        if not self.ended:
            self.ended = True
            self.sink.failed(error)


class VllmEngine:
    def __init__(
        self,
        runtime: VllmRuntime,
        prompts: PromptBuilder,
        *,
        max_batch_size: int,
        max_waiting: int,
        max_model_len: int,
        kv_bytes_per_token: int,
        grammars: GrammarCompiler | None = None,
        name: str = "vllm-engine",
        link: str = "",
        media_cache_bytes: int = 0,
    ) -> None:
        self._runtime = runtime
        self._grammars = grammars
        self._link = link  # the loading chain's link (fault drills name it)
        self._prompts = prompts
        self._max_waiting = max_waiting
        self._max_model_len = max_model_len
        self._kv_bytes_per_token = kv_bytes_per_token
        self._name = name
        self._capabilities = EngineCapabilities(
            mode="continuous", max_batch_size=max_batch_size, decoding_options=HONOURED_OPTIONS
        )
        # What this replica handed vLLM, by media identity, bounded as vLLM's processor cache is: which media vLLM
        # holds processed here (its own caches key on the same identity), for the affinity router and the figures.
        self._media = MediaCache(media_cache_bytes, kind="vllm")
        self._stats = EngineStats(media_cache=self._media.stats if media_cache_bytes else None)
        self._tickets: dict[str, _Ticket] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._closing = False
        self._held: asyncio.Event | None = None  # on vLLM's loop: set while requests are held, so the watcher polls
        self._watcher = runtime.spawn(self._abort_stopped())

    @property
    def capabilities(self) -> EngineCapabilities:
        return self._capabilities

    @property
    def stats(self) -> EngineStats:
        figures = self._runtime.figures
        self._stats.running = figures.running
        self._stats.kv_cache_usage = figures.kv_cache_usage
        self._stats.prefix_cache_hit_rate = figures.prefix_cache_hit_rate
        with self._lock:
            self._stats.waiting = max(0, len(self._tickets) - figures.running)
        return self._stats

    def submit(self, request: GenerationRequest, sink: RequestSink, stop: threading.Event) -> None:
        sink = GuardedSink(sink, stop)  # a caller that goes away ends its request, not this engine
        self._check_room()
        response_format = request.options.response_format
        if response_format is not None and self._grammars is not None:
            self._grammars.check(response_format, stop)  # within limits.max_schema_compile_s, or refused here
        prompt = self._prompts.build(request)
        params = self._prompts.sampling_params(request)
        if self._stats.media_cache is not None:
            self._record_media(request)
        if not sink.streams_text:
            # Nobody reads the pieces: vLLM sends the first token's output (the request is open) and the last.
            params.stream_interval = request.max_new_tokens
        with self._lock:
            self._check_room()
            request_id = f"{self._name}-{next(self._ids)}"
            ticket = self._tickets[request_id] = _Ticket(request, sink, stop)
        self._runtime.spawn(self._run(request_id, ticket, prompt, params))

    def _record_media(self, request: GenerationRequest) -> None:
        """Count each item as a hit when vLLM was handed it before (and an LRU of its processor cache's size still
        holds it), else record it, priced as vLLM's processed copy: fp32 pixels, 4 bytes a channel."""
        for message in request.messages:
            for part in message.content:
                media_id = getattr(part, "media_id", None)
                if media_id is not None and self._media.get(media_id) is None:  # a record holds True: a hit
                    pixels = part.pixels if isinstance(part, ImagePart) else part.frames
                    self._media.put(media_id, True, FP32_BYTES * pixels.nbytes, media_id=media_id)

    def cached_media(self) -> list[str]:
        return self._media.media_ids()

    def _check_room(self) -> None:
        if self._closing:
            raise SchedulerClosedError("This replica stopped taking requests (its engine is closing)")
        if self._runtime.dead_reason:
            raise SchedulerClosedError(self._runtime.dead_reason)
        if len(self._tickets) >= self._max_waiting:
            raise ReplicaBusyError(f"{len(self._tickets)} requests are held by this replica (limit {self._max_waiting})")

    async def _run(self, request_id: str, ticket: _Ticket, prompt: dict[str, Any], params: Any) -> None:
        request, sink = ticket.request, ticket.sink
        prompt_tokens: int | None = None
        text: list[str] = []
        logprobs: list = []
        completion_tokens = 0
        if self._held is not None:
            self._held.set()  # the watcher polls while this request is held
        try:
            raise_if_simulated_broken_link(self._link)
            if ticket.stop.is_set():  # stopped before vLLM knew of it: an abort then would miss it
                ticket.aborted = True
                self._cancelled(ticket, 0)
                return
            async for output in self._runtime.engine.generate(
                prompt, params, request_id, priority=request.priority
            ):
                if ticket.stop.is_set() and not ticket.aborted_by_run:  # the watcher's may have come before vLLM had it
                    ticket.aborted = ticket.aborted_by_run = True
                    await self._runtime.engine.abort(request_id)
                if prompt_tokens is None:
                    prompt_tokens = len(output.prompt_token_ids or ())
                    try:
                        check_prompt_tokens(prompt_tokens, request)
                    except PromptTooLongError:
                        await self._runtime.engine.abort(request_id)
                        raise
                    sink.opened(request, (), self._cost(request, prompt_tokens), prompt_tokens)
                completion = output.outputs[0]
                completion_tokens += len(completion.token_ids)
                pieces = token_logprobs(completion.token_ids, completion.logprobs, request.options.top_logprobs) \
                    if request.options.logprobs else ()
                if completion.text or pieces:
                    text.append(completion.text)
                    logprobs.extend(pieces)
                    sink.text(TextDelta(completion.text, pieces, completion_tokens=completion_tokens))
                if output.finished:
                    if ticket.aborted or completion.finish_reason == "abort":
                        self._cancelled(ticket, completion_tokens)
                        return
                    ticket.ended = True
                    sink.finished(
                        GenerationResult(
                            text="".join(text),
                            prompt_tokens=prompt_tokens,
                            completion_tokens=completion_tokens,
                            finish_reason="stop" if completion.finish_reason == "stop" else "length",
                            logprobs=tuple(logprobs) if request.options.logprobs else None,
                        )
                    )
                    return
            if ticket.aborted:
                self._cancelled(ticket, completion_tokens)
        except ValueError as error:
            ticket.fail(self._refusal(error, request))
        except EngineDeadError as error:
            ticket.fail(SchedulerClosedError(f"vLLM's engine died while serving this request: {error}"))
        except BaseException as error:  # noqa: BLE001 - every failure reaches the request's caller
            ticket.fail(error)
        finally:
            with self._lock:
                self._tickets.pop(request_id, None)

    def _refusal(self, error: ValueError, request: GenerationRequest) -> ValueError:
        """vLLM's input refusals, in our terms: a prompt past ``max_model_len`` is a prompt too long."""
        message = str(error)
        if isinstance(error, PromptTooLongError) or "longer than the maximum model length" not in message:
            return error
        return PromptTooLongError(
            f"{message.splitlines()[0]} (this replica's max_model_len {self._max_model_len} holds the prompt and up to "
            f"{request.max_new_tokens} new tokens): send fewer frames or less text"
        )

    def _cost(self, request: GenerationRequest, prompt_tokens: int) -> RequestCost:
        return RequestCost(
            kv_cache_bytes=(prompt_tokens + request.max_new_tokens) * self._kv_bytes_per_token, vision_bytes=0, prefill_bytes=0
        )

    def _cancelled(self, ticket: _Ticket, tokens: int) -> None:
        ticket.ended = True
        self._stats.cancelled += 1
        self._stats.last_cancelled_tokens = tokens
        logger.info("Request stopped after %d of at most %d tokens: its caller went away (aborted in vLLM)",
                    tokens, ticket.request.max_new_tokens)

    async def _abort_stopped(self) -> None:
        """Abort in vLLM every request whose caller went away, queued or running: polled while requests are held,
        asleep while none are (an idle replica wakes for nothing)."""
        self._held = asyncio.Event()
        while not self._closing:
            if not self._tickets:
                self._held.clear()
                if not self._tickets:  # a request's _run sets the event on this loop, so none is missed
                    await self._held.wait()
                continue
            await asyncio.sleep(_STOP_POLL_S)
            with self._lock:
                stopped = [request_id for request_id, ticket in self._tickets.items() if ticket.stop.is_set() and not ticket.aborted]
                for request_id in stopped:
                    self._tickets[request_id].aborted = True
            if stopped and self._runtime.engine is not None:
                await self._runtime.engine.abort(stopped)

    def describe(self) -> dict[str, Any]:
        return {**describe_engine(self.capabilities, self.stats), "engine": "vllm", "vllm": self._runtime.figures.to_dict()}

    def prepare_structured_output(self) -> None:
        """Our compile server started (vLLM compiles its own grammars; ours bounds them first) before any request."""
        if self._grammars is not None:
            self._grammars.check(ResponseFormat("json_object"))

    def health_problem(self) -> str | None:
        return self._runtime.dead_reason

    def close(self, timeout_s: float = 60.0) -> None:
        """No new requests; those held fail with :class:`SchedulerClosedError` as vLLM shuts down."""
        self._closing = True
        if self._grammars is not None:
            self._grammars.close()
        self._watcher.cancel()
        with self._lock:
            held = list(self._tickets.values())
            self._tickets.clear()
        for ticket in held:
            ticket.fail(SchedulerClosedError("This replica stopped taking requests (its engine is closing)"))
