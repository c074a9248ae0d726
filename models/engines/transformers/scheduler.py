"""Iteration-level (continuous) batching for one replica: requests join and leave between decode steps.

One scheduler thread owns the model. Callers :meth:`BatchScheduler.submit` a request from their
own thread: the processor runs there (tokens, pixels), the cost is predicted
(:mod:`memory.admission`) and the request waits in a bounded queue. Between two decode steps the
thread admits waiting requests while the batch has room and their predicted bytes fit the
headroom, prefills each alone (its own media), joins it to the running batch, then runs one
decode step for every row. A row leaves the moment it ends (its stop token, its ``max_tokens``,
its caller gone), so a 4-token request never waits for a 400-token one.

Each request keeps its own sampling settings and seed, its own stream of text, its own
``finish_reason`` and token counts, and its own out-of-memory handling:

* out of memory while prefilling beside a running batch: the request waits until the batch has
  drained and tries again alone (the batch is made smaller first);
* out of memory while prefilling alone: that request, and only that one, is retried with fewer
  frames and pixels (:func:`models.media.request_shrink.shrink_request`), down to the minimum, then
  handed off (:class:`~models.errors.RequestOutOfMemoryError`);
* out of memory in a decode step: the step is split in halves, recursively; a single row that
  still does not fit ends with an out-of-memory error, and the other rows go on untouched.

The decisions (what to admit, how to answer an out-of-memory, which state a request may move to) are
:mod:`models.engines.transformers.batch_policy`'s, pure and tested without a model; this class executes them. Every
out-of-memory goes through one method, :meth:`BatchScheduler._out_of_memory`.

A request whose prediction exceeds the headroom even alone is shrunk before it is queued, or
handed off; it is never tried into an out-of-memory. On the CPU the batch's price includes what
every request in the replica holds in the same RAM, waiting or running: its frames and, until its
prefill (after which they are dropped), the processor's tensors.
"""

import collections
import contextvars
import dataclasses
import logging
import threading
from typing import Any, Callable

import torch

from memory.admission import RequestCost, RequestCostModel, batch_bytes
from memory.cleanup import release_memory
from memory.out_of_memory import is_out_of_memory
from models.decoding.answer_builder import AnswerBuilder
from models.decoding.grammar import GrammarCompiler
from models.decoding.grammar_server import SchemaCompileLimits
from models.decoding.token_sampler import TokenSampler
from models.engines.contract import EngineCapabilities, EngineStats, GuardedSink, RequestSink, check_options, describe_engine
from models.engines.transformers.batch_policy import (
    ADMITTED_STATES,
    ALONE_STATES,
    OomPhase,
    RequestState,
    admitted_state,
    answer_out_of_memory,
    next_state,
    plan_admission,
)
from models.engines.transformers.hf_batch_model import HfBatchModel, PreparedPrompt
from models.engines.transformers.kv_batch import KvBatch
from models.errors import (
    ReplicaBusyError,
    RequestOutOfMemoryError,
    SchedulerClosedError,
    StreamOutOfMemoryError,
)
from models.media.media_cache import MediaCache
from models.media.request_shrink import OomRetry, ShrinkMinimum, request_size, shrink_request
from models.requests import GenerationRequest, ResponseFormat

logger = logging.getLogger(__name__)

# The decoding options this engine honours, each read where it acts: the sampler (models/decoding/token_sampler.py), the
# answer's end (models/decoding/answer_builder.py) and the grammar and prompt here. tests/test_engine_options.py checks this
# list against what those files read, so an option added to DecodingOptions is refused by name until it is mapped.
HONOURED_OPTIONS = frozenset({
    "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias",
    "min_tokens", "ignore_eos", "stop", "logprobs", "top_logprobs", "response_format",
})


@dataclasses.dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int
    max_waiting: int
    headroom_bytes: int  # the replica's budget minus its weights: what admitted requests may use together
    max_prefill_tokens: int = 8192  # prompt tokens prefilled in one pass, over all the requests in it
    schema_compile: SchemaCompileLimits = SchemaCompileLimits()  # limits.max_schema_compile_s and the other compile limits


@dataclasses.dataclass(eq=False)  # one request: told apart by identity, never by comparing its frames
class _Ticket:
    prepared: PreparedPrompt
    cost: RequestCost
    sink: RequestSink
    stop: threading.Event
    retries: list[OomRetry]
    state: RequestState = RequestState.WAITING  # moved only through ``move``, by models.engines.transformers.batch_policy's table
    row_tokens: int = 0  # its row's longest length in the padded batch: max(prompt, batch length at admission) + max_tokens
    # The submitter's context (Serve's request id among it): log lines about this request carry its id.
    context: contextvars.Context = dataclasses.field(default_factory=contextvars.copy_context)
    grammar: Any = None  # the compiled response_format, when the request has one
    sampler: TokenSampler | None = None
    answer: AnswerBuilder | None = None

    @property
    def request(self) -> GenerationRequest:
        return self.prepared.request

    @property
    def admitted(self) -> bool:
        """It counts in ``admitted_bytes``: being prefilled, or a row of the batch."""
        return self.state in ADMITTED_STATES

    @property
    def alone(self) -> bool:
        """It ran out of memory beside others: it starts only into an empty batch, prefilled on its own."""
        return self.state in ALONE_STATES

    def move(self, state: RequestState) -> None:
        self.state = next_state(self.state, state)

    def log(self, level: int, message: str, *args: object) -> None:
        self.context.run(logger.log, level, message, *args)


class BatchScheduler:
    """The continuous-batching :class:`~models.engines.contract.Engine`: every decoding option, many requests a step."""

    def __init__(
        self,
        engine: HfBatchModel,
        costs: RequestCostModel,
        limits: BatchLimits,
        *,
        shrink_minimum: ShrinkMinimum,
        on_out_of_memory: Callable[[str], None] = lambda outcome: None,
        name: str = "batch-scheduler",
        media_cache: MediaCache | None = None,
    ) -> None:
        self._steps = engine
        self._costs = costs
        self._limits = limits
        self._minimum = shrink_minimum
        self._on_out_of_memory = on_out_of_memory
        self._waiting: collections.deque[_Ticket] = collections.deque()
        self._running: list[_Ticket] = []
        self._holding: list[_Ticket] = []  # admitted: being prefilled or running; what admitted_bytes prices
        self._batch: KvBatch | None = None
        self._wake = threading.Condition()
        self._closing = False
        self.stats = EngineStats(headroom_bytes=limits.headroom_bytes)
        # The vision tower's outputs and media prefixes' KV by media identity, inside the headroom; given back before a
        # request waits for it.
        self._media_cache = media_cache if media_cache is not None and engine.reuse_media(
            media_cache, room_bytes=self._media_cache_room) else None
        self.stats.media_cache = self._media_cache.stats if self._media_cache is not None else None
        self.capabilities = EngineCapabilities(
            mode="continuous", max_batch_size=limits.max_batch_size, decoding_options=HONOURED_OPTIONS
        )
        self._grammars = GrammarCompiler(
            engine.tokenizer, engine.vocab_size, tuple(sorted(engine.eos_ids)), limits=limits.schema_compile
        )
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- callers' side -------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, sink: RequestSink, stop: threading.Event) -> None:
        """Prepare ``request`` in the caller's thread and queue it; events then go to ``sink``.

        Raises at once (in the caller's thread) what the request itself gets wrong: a prompt over
        its limit, input the processor refuses, a request too big for this replica even at the
        shrink minimum, or a full queue (:class:`ReplicaBusyError`).
        """
        sink = GuardedSink(sink, stop)  # a caller that goes away ends its request, not this engine
        self._check_room()  # before the processor runs: a full queue refuses at once
        check_options(request, self._steps.vocab_size)
        response_format = request.options.response_format
        grammar = self._grammars.compile(response_format, stop) if response_format is not None else None
        prepared, cost, retries = self._fitting(self._steps.prepare(request))
        ticket = _Ticket(prepared=prepared, cost=cost, sink=sink, stop=stop, retries=retries, grammar=grammar)
        with self._wake:
            self._check_room()  # again under the lock: others may have queued meanwhile
            self._queue(ticket)
            self._count_queue()
            self._wake.notify()

    def _queue(self, ticket: "_Ticket") -> None:
        """Behind every waiting request of the same or a lower priority value, ahead of any higher one (an
        interactive request overtakes queued background work, never another interactive one)."""
        priority = ticket.request.priority
        for position, waiting in enumerate(self._waiting):
            if waiting.request.priority > priority:
                self._waiting.insert(position, ticket)
                return
        self._waiting.append(ticket)

    def _check_room(self) -> None:
        if self._closing:
            raise SchedulerClosedError("This replica stopped taking requests (its model is being unloaded)")
        if len(self._waiting) >= self._limits.max_waiting:
            raise ReplicaBusyError(
                f"{len(self._waiting)} requests are waiting on this replica (limit {self._limits.max_waiting})"
            )

    def _fitting(self, prepared: PreparedPrompt) -> tuple[PreparedPrompt, RequestCost, list[OomRetry]]:
        """Shrink a request that can never fit the headroom until it does; hand it off at the minimum."""
        retries: list[OomRetry] = []
        while True:
            cost = self._predict(prepared)
            if cost.total_bytes <= self._limits.headroom_bytes:
                return prepared, cost, retries
            before = request_size(prepared.request)
            smaller = shrink_request(prepared.request, self._minimum)
            if smaller is None:
                raise RequestOutOfMemoryError(
                    f"The request is predicted to need {cost.total_bytes} bytes ({before.video_frames} frames, "
                    f"{before.images} images at up to {before.max_pixels_per_frame} pixels, {prepared.prompt_tokens} "
                    f"prompt tokens); this replica's headroom is {self._limits.headroom_bytes} bytes, even at the "
                    f"minimum of {self._minimum.min_frames} frames and {self._minimum.min_pixels_per_frame} pixels"
                )
            logger.info(  # in the submitter's thread: Serve's request id is in context
                "Request predicted at %d bytes exceeds the %d-byte headroom; shrinking it up front (%d -> %d frames)",
                cost.total_bytes, self._limits.headroom_bytes, before.video_frames, smaller.num_video_frames,
            )
            with self._wake:  # the submitter's thread: other submitters count too
                self.stats.shrunk_up_front += 1
            retries.append(OomRetry(before=before, after=request_size(smaller), freed_bytes=0))
            prepared = self._steps.prepare(smaller)

    def _predict(self, prepared: PreparedPrompt) -> RequestCost:
        return self._costs.predict(
            prompt_tokens=prepared.prompt_tokens,
            max_new_tokens=prepared.request.max_new_tokens,
            visual_patches=prepared.visual_patches,
            input_bytes=prepared.input_bytes,
            media_bytes=prepared.media_bytes,
        )

    def describe(self) -> dict[str, Any]:
        return describe_engine(self.capabilities, self.stats)

    def cached_media(self) -> list[str]:
        return self._media_cache.media_ids() if self._media_cache is not None else []

    def _media_cache_room(self) -> int:
        """What the media cache may grow into now: the headroom less the batch's predicted peak and the cache."""
        return self._limits.headroom_bytes - self.stats.admitted_bytes - (self._media_cache.bytes if self._media_cache else 0)

    def _give_back_media_cache(self, reason: str) -> None:
        """Requests come first: after an admission, the cache gives back what the batch's predicted peak needs of the
        headroom (called with the lock held, before the prefill runs)."""
        if self._media_cache is None:
            return
        over = self.stats.admitted_bytes + self._media_cache.bytes - self._limits.headroom_bytes
        if over > 0:
            freed = self._media_cache.give_back(over)
            logger.info("The media cache gave back %d bytes (%s)", freed, reason)

    def prepare_structured_output(self) -> None:
        """The compile server started and ``json_object`` compiled (with the closing masks), before any request."""
        self._grammars.compile(ResponseFormat("json_object"))

    def health_problem(self) -> str | None:
        if not self._closing and not self._thread.is_alive():
            return f"The engine's thread {self._thread.name!r} ended while the replica serves"
        return None

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop taking requests: waiting ones fail with :class:`SchedulerClosedError` (the router sends them
        elsewhere), running ones finish, then the thread ends."""
        with self._wake:
            self._closing = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            self._count_queue()
            self._wake.notify()
        for ticket in waiting:
            ticket.sink.failed(SchedulerClosedError("This replica stopped taking requests before this one started"))
        self._grammars.close()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout_s)

    # -- the scheduler thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closing and not self._waiting and not self._running:
                    self._wake.wait()
                if self._closing and not self._running:
                    break
                admitted = self._admit()
            try:
                self._start_admitted(admitted)
                self._drop_stopped()
                if self._running:
                    self._step()
            except Exception as error:  # noqa: BLE001 - a bug must not leave callers waiting forever
                logger.error("Batch step failed; ending the %d running requests", len(self._running), exc_info=error)
                self._fail_running(error)

    def _fail_running(self, error: BaseException) -> None:
        """Every admitted request (running, or being prefilled) ends with ``error``; the batch is dropped."""
        self._running, self._batch = [], None
        for ticket in list(self._holding):
            self._end(ticket)
            ticket.sink.failed(error)
        self._publish_running()
        release_memory()

    def _admit(self) -> list[_Ticket]:
        """Waiting requests that may start now, in arrival order (called with the lock held); the decision is
        :func:`models.engines.transformers.batch_policy.plan_admission`'s."""
        for ticket in [ticket for ticket in self._waiting if ticket.stop.is_set()]:
            self._waiting.remove(ticket)
            ticket.move(RequestState.ENDED)
            self._cancelled(ticket, tokens=0)
        batch_length = self._batch.length if self._batch is not None else 0
        for ticket in self._waiting:
            ticket.row_tokens = max(ticket.prepared.prompt_tokens, batch_length) + ticket.request.max_new_tokens
        admitted = plan_admission(
            self._waiting,
            state_of=lambda ticket: ticket.state,
            alone_bytes_of=lambda ticket: ticket.cost.total_bytes,
            batch_bytes_with=lambda joining: self._batch_bytes([*self._holding, *joining], joining),
            holding=len(self._holding),
            headroom_bytes=self._limits.headroom_bytes,
            max_batch_size=self._limits.max_batch_size,
            is_background=lambda ticket: ticket.request.priority > 0,
        )
        for ticket in admitted:
            self._waiting.popleft()
            ticket.move(admitted_state(ticket.state))
            self._holding.append(ticket)
        self._count_queue()  # first: the admitted ones leave the waiting requests' inputs
        self._recount(prefilling=admitted)
        if admitted:
            self._give_back_media_cache(f"{len(admitted)} requests admitted")
        return admitted

    def _batch_bytes(self, tickets: list[_Ticket], prefilling: list[_Ticket]) -> int:
        if self._costs.inputs_in_compute_memory:
            # Every request in the replica holds its inputs in the batch's RAM. The waiting count was
            # taken under the lock, and still includes the requests being admitted from it now.
            inputs = self.stats.waiting_input_bytes + sum(_held_input_bytes(ticket) for ticket in self._holding)
        else:
            inputs = sum(ticket.prepared.input_bytes for ticket in prefilling)  # copied to the device to prefill
        return batch_bytes(
            self._costs,
            row_tokens=[ticket.row_tokens for ticket in tickets],
            prefill_prompts=[ticket.prepared.prompt_tokens for ticket in prefilling],
            vision_bytes=sum(ticket.cost.vision_bytes for ticket in prefilling),
            input_bytes=inputs,
        )

    def _recount(self, prefilling: list[_Ticket] = ()) -> None:
        self.stats.admitted_bytes = self._batch_bytes(self._holding, list(prefilling))
        self.stats.peak_admitted_bytes = max(self.stats.peak_admitted_bytes, self.stats.admitted_bytes)

    def _start(self, ticket: _Ticket) -> None:
        """Prefill one admitted request and join it to the batch."""
        while True:
            try:
                row, logits = self._steps.prefill(ticket.prepared)
                break
            except Exception as error:  # noqa: BLE001 - anything else fails this request only
                if not is_out_of_memory(error):
                    self._end(ticket)
                    ticket.sink.failed(error)
                    return
                cause = _first_line(error)
            if not self._out_of_memory("prefill", [ticket], cause):  # outside the except: its tensors can go
                return
        self._begin([ticket], row, logits[None])

    def _start_admitted(self, admitted: list[_Ticket]) -> None:
        """Prefill the admitted requests, several in one pass where their inputs allow it."""
        for group in self._prefill_groups(admitted):
            if len(group) == 1:
                self._start(group[0])
                continue
            try:
                rows, logits = self._steps.prefill_many([ticket.prepared for ticket in group])
            except Exception as error:  # noqa: BLE001 - retried one by one, where each request's own fault shows
                cause = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
            else:
                self._begin(group, rows, logits)
                continue
            release_memory()  # outside the except: the traceback's tensors can go
            self.stats.prefill_splits += 1
            logger.warning("A prefill of %d requests failed (%s); prefilling them one by one", len(group), cause)
            for ticket in group:
                self._start(ticket)

    def _prefill_groups(self, admitted: list[_Ticket]) -> list[list[_Ticket]]:
        """Consecutive batchable requests up to ``max_prefill_tokens`` prompt tokens a group; others alone."""
        groups: list[list[_Ticket]] = []
        tokens = 0
        for ticket in admitted:
            joins = (
                bool(groups)
                and self._groupable(ticket)
                and self._groupable(groups[-1][-1])
                and tokens + ticket.prepared.prompt_tokens <= self._limits.max_prefill_tokens
            )
            if joins:
                groups[-1].append(ticket)
                tokens += ticket.prepared.prompt_tokens
            else:
                groups.append([ticket])
                tokens = ticket.prepared.prompt_tokens
        return groups

    def _groupable(self, ticket: _Ticket) -> bool:
        return not ticket.alone and self._steps.batchable(ticket.prepared)

    def _begin(self, tickets: list[_Ticket], rows: KvBatch, logits: torch.Tensor) -> None:
        """Prefilled requests join the running batch: each samples its first token and starts streaming."""
        end_ids = frozenset(self._steps.eos_ids)
        for ticket in tickets:
            ticket.sampler = TokenSampler(
                ticket.request,
                self._steps.device,
                prompt_ids=ticket.prepared.inputs["input_ids"] if ticket.request.options.repetition_penalty != 1.0 else None,
                end_ids=end_ids,
                grammar=self._grammars.new_state(ticket.grammar) if ticket.grammar is not None else None,
            )
            ticket.answer = AnswerBuilder(
                self._steps.tokenizer, ticket.request, end_ids=end_ids, prompt_tokens=ticket.prepared.prompt_tokens
            )
            ticket.sink.opened(ticket.request, tuple(ticket.retries), ticket.cost, ticket.prepared.prompt_tokens)
        tokens, failures = self._sample(tickets, logits)
        rows.last_tokens = torch.tensor([token for token, _ in tokens], dtype=torch.long, device=rows.last_tokens.device)
        if self._batch is None:
            self._batch = rows
        else:
            self._batch.join(rows)
        first = len(self._running)
        self._running.extend(tickets)
        for ticket in tickets:
            ticket.prepared = ticket.prepared.without_inputs()
        for ticket in tickets:
            ticket.move(RequestState.RUNNING)
        self._recount()  # prefilled: only their KV cache (and, on the CPU, their frames) stays
        self._publish_running()
        self.stats.peak_batch_size = max(self.stats.peak_batch_size, len(self._running))
        ended = [
            first + index for index, (ticket, token) in enumerate(zip(tickets, tokens))
            if self._deliver(ticket, token, failures.get(index))
        ]
        if ended:
            self._leave(ended)

    def _out_of_memory(self, phase: OomPhase, tickets: list[_Ticket], cause: str) -> bool:
        """Every out-of-memory goes through here: release memory, count it, ask the policy
        (:func:`models.engines.transformers.batch_policy.answer_out_of_memory`), do what it says. ``True`` when the caller should
        retry: the prefill of the (now smaller) request, or the decode step in halves."""
        if self._media_cache is not None and self._media_cache.bytes:  # first what is only a speed-up
            logger.warning("Out of memory (%s): the media cache gives back all its %d bytes", phase, self._media_cache.give_back(self._media_cache.bytes))
        freed = release_memory()
        freed_bytes = freed.gpu_reserved_freed_bytes + freed.process_rss_freed_bytes
        self.stats.request_ooms += 1
        ticket = tickets[0]
        smaller = shrink_request(ticket.request, self._minimum) if phase == "prefill" else None
        others = len(self._running) if phase == "prefill" else 0
        answer = answer_out_of_memory(phase=phase, rows=len(tickets), others_running=others, can_shrink=smaller is not None)
        if answer == "split_step":
            self.stats.decode_splits += 1
            logger.warning("A decode step of %d rows ran out of memory; running it in halves (%s)", len(tickets), cause)
            return True
        if answer == "wait_alone":
            # Beside a running batch: make the batch smaller first, by letting it drain.
            ticket.log(logging.WARNING, "Prefill ran out of memory beside %d running rows; it waits to run alone (%s)",
                       others, cause)
            with self._wake:
                self._waiting.appendleft(ticket)
                self._count_queue()
            self._end(ticket, RequestState.WAITING_ALONE)  # after: its inputs are counted as waiting again
            return False
        before = request_size(ticket.request)
        if answer == "end":
            self._on_out_of_memory("handed_off")
            self._end(ticket)
            if phase == "decode":
                ticket.log(logging.WARNING, "A decode step ran out of memory on one row alone; ending that request (%s)", cause)
                error_type = StreamOutOfMemoryError if ticket.answer.sent_chars else RequestOutOfMemoryError
                ticket.sink.failed(error_type(f"ran out of memory mid-answer: {cause}"))
                return False
            ticket.log(
                logging.WARNING,
                "Request ran out of memory alone at %d frames, %d images, %d pixels per frame, the minimum; "
                "cleanup freed %d bytes; handing it to the other group (%s)",
                before.video_frames, before.images, before.max_pixels_per_frame, freed_bytes, cause,
            )
            ticket.sink.failed(RequestOutOfMemoryError(
                f"ran out of memory with {before.video_frames} frames and {before.images} images at "
                f"{before.max_pixels_per_frame} pixels each, at the minimum of {self._minimum.min_frames} frames and "
                f"{self._minimum.min_pixels_per_frame} pixels, after {len(ticket.retries)} smaller retries "
                f"(cleanup freed {freed_bytes} bytes)"
            ))
            return False
        # "shrink": the same request, smaller, prefilled again on its own.
        self._on_out_of_memory("retry_smaller")
        after = request_size(smaller)
        ticket.log(
            logging.WARNING,
            "Request ran out of memory at %d frames, %d pixels per frame (cleanup freed %d bytes); "
            "retrying with %d frames, %d pixels per frame (%s)",
            before.video_frames, before.max_pixels_per_frame, freed_bytes, after.video_frames,
            after.max_pixels_per_frame, cause,
        )
        ticket.retries.append(OomRetry(before=before, after=after, freed_bytes=freed_bytes))
        self._holding.remove(ticket)
        self._recount()
        try:
            ticket.prepared = self._steps.prepare(smaller)
        except Exception as error:  # noqa: BLE001 - the smaller request is refused: this request fails
            ticket.move(RequestState.ENDED)
            ticket.sink.failed(error)
            return False
        ticket.cost = self._predict(ticket.prepared)
        ticket.row_tokens = ticket.prepared.prompt_tokens + ticket.request.max_new_tokens  # it runs alone
        ticket.move(RequestState.PREFILLING_ALONE)
        self._holding.append(ticket)
        self._recount()
        return True

    def _step(self) -> None:
        """One decode step for every running row; rows that end leave the batch."""
        batch, tickets, logits = self._decode(self._batch, list(self._running))
        self._batch, self._running = batch, tickets
        self._publish_running()
        self.stats.steps += 1
        if logits is None:
            return
        next_tokens, failures = self._sample(tickets, logits)
        batch.advance(torch.tensor([token for token, _ in next_tokens], dtype=torch.long))
        ended = [
            index for index, (ticket, token) in enumerate(zip(tickets, next_tokens))
            if self._deliver(ticket, token, failures.get(index))
        ]
        if ended:
            self._leave(ended)

    def _decode(
        self, batch: KvBatch, tickets: list[_Ticket]
    ) -> tuple[KvBatch | None, list[_Ticket], torch.Tensor | None]:
        """Decode ``batch``; after an out-of-memory, what :meth:`_out_of_memory` decides (halves, recursively;
        a single row that still does not fit ends)."""
        layers = [(layer.keys, layer.values) for layer in batch.cache.layers]
        try:
            return batch, tickets, self._steps.decode(batch)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            cause = _first_line(error)
        for layer, (keys, values) in zip(batch.cache.layers, layers):
            layer.keys, layer.values = keys, values  # undo the layers that had grown before the error
        if not self._out_of_memory("decode", tickets, cause):
            return None, [], None
        half = len(tickets) // 2
        first, second = batch.split(half)
        parts = [self._decode(first, tickets[:half]), self._decode(second, tickets[half:])]
        parts = [part for part in parts if part[0] is not None]
        if not parts:
            return None, [], None
        joined = KvBatch.concatenate([part[0] for part in parts])
        return joined, [t for part in parts for t in part[1]], torch.cat([part[2] for part in parts])

    def _sample(self, tickets: list[_Ticket], logits: torch.Tensor) -> tuple[list[tuple[int, Any]], dict[int, Exception]]:
        """Each row's next token; a row whose sampling fails (its grammar, its options) gets a placeholder and
        its error, so that it alone ends and the others go on."""
        tokens: list[tuple[int, Any]] = []
        failures: dict[int, Exception] = {}
        for index, ticket in enumerate(tickets):
            try:
                tokens.append(ticket.sampler.next_token(logits[index]))
            except Exception as error:  # noqa: BLE001 - one request's fault ends that request only
                ticket.log(logging.ERROR, "Sampling the next token failed; ending this request only: %s: %s",
                           type(error).__name__, error)
                failures[index] = error
                tokens.append((0, None))  # the row leaves before the next step
        return tokens, failures

    def _deliver(self, ticket: _Ticket, sampled: tuple[int, Any], failure: Exception | None) -> bool:
        """Send the sampled token's text, or the request's failure; ``True`` when the request has ended."""
        if failure is not None:
            ticket.sink.failed(failure)
            return True
        return self._emit(ticket, sampled)

    def _emit(self, ticket: _Ticket, sampled: tuple[int, Any]) -> bool:
        """Send the text the sampled token completes; ``True`` when the request has ended."""
        token, logprobs = sampled
        pushed = ticket.answer.push(token, logprobs, grammar_complete=ticket.sampler.grammar_complete)
        if pushed.delta is not None:
            ticket.sink.text(pushed.delta)
        if pushed.result is not None:
            ticket.sink.finished(pushed.result)
            return True
        return False

    def _drop_stopped(self) -> None:
        stopped = [index for index, ticket in enumerate(self._running) if ticket.stop.is_set()]
        for index in stopped:
            ticket = self._running[index]
            self._cancelled(ticket, tokens=ticket.answer.generated)
        if stopped:
            self._leave(stopped)

    def _cancelled(self, ticket: _Ticket, *, tokens: int) -> None:
        self.stats.cancelled += 1
        self.stats.last_cancelled_tokens = tokens
        ticket.log(logging.INFO, "Request stopped after %d of at most %d tokens: its caller went away",
                   tokens, ticket.request.max_new_tokens)

    def _leave(self, indices: list[int]) -> None:
        gone = set(indices)
        for index in gone:
            self._end(self._running[index])
        keep = [index for index in range(len(self._running)) if index not in gone]
        self._running = [self._running[index] for index in keep]
        if keep:
            self._batch.keep(keep)
        else:
            self._batch = None
        self._publish_running()

    def _end(self, ticket: _Ticket, state: RequestState = RequestState.ENDED) -> None:
        """Move ``ticket`` out of the batch (ended, or back to wait alone) and give back its share of the batch's
        predicted bytes, once."""
        if ticket.state is RequestState.ENDED:
            return
        was_admitted = ticket.admitted
        ticket.move(state)
        if was_admitted:
            self._holding.remove(ticket)
            self._recount()

    def _publish_running(self) -> None:
        """The one writer of ``stats.running``: the rows of the batch now."""
        self.stats.running = len(self._running)

    def _count_queue(self) -> None:
        """Called with the lock held: submitters append to the queue from their own threads."""
        self.stats.waiting = len(self._waiting)
        self.stats.waiting_bytes = sum(ticket.cost.total_bytes for ticket in self._waiting)
        self.stats.waiting_input_bytes = sum(_held_input_bytes(ticket) for ticket in self._waiting)


def _held_input_bytes(ticket: _Ticket) -> int:
    """What a request's inputs hold in host memory now: its frames, and the processor's tensors until its prefill."""
    return ticket.prepared.media_bytes + ticket.prepared.input_bytes


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__
