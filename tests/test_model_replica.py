"""The replica class in this process (no Serve): states, batching, request out-of-memory, health.

The one double is at the hardware boundary: a decode step or a prefill that raises CUDA's
out-of-memory error, which a CPU cannot produce on demand.
"""

import asyncio
import dataclasses
import gc
import sys

import numpy as np
import psutil
import pytest
import torch
from polling import wait_for_condition

from deployments.config.app_config import load_app_config
from deployments.plan import resolve_app
from deployments.replica.model_replica import ModelReplica
from deployments.replica.protocol import ReplicaAnswer, ReplicaUnavailableError, StreamOpened
from deployments.routing.autoscaling import READY_METRIC
from deployments.routing.ready_replica_router import MEDIA_STAT, READY_STAT
from models.decoding.token_sampler import TokenSampler
from models.errors import RequestOutOfMemoryError, StreamOutOfMemoryError
from models.fault_injection import SIMULATE_OOM_ABOVE_PIXELS_ENV
from models.requests import ChatMessage, GenerationRequest, TextDelta, TextPart, VideoPart

pytestmark = pytest.mark.component

REQUEST = GenerationRequest(messages=(ChatMessage("user", (TextPart("hi"),)),), max_new_tokens=2)


def generate(replica: ModelReplica, request: GenerationRequest) -> ReplicaAnswer:
    return asyncio.run(replica.generate(request))


@pytest.fixture
def replicas():
    """Replicas made by a test; their loader and scheduler threads are stopped after it."""
    made: list[ModelReplica] = []
    yield made
    for replica in made:
        replica.close()


@pytest.fixture
def ready_cpu_replica(replicas):
    def make(*, request_oom: dict | None = None, **cpu_group) -> ModelReplica:
        replica = ModelReplica(resolve_app(load_app_config({"cpu_group": cpu_group, "request_oom": request_oom or {}})), "cpu")
        replicas.append(replica)
        wait_for_condition(lambda: replica.describe()["state"] == "ready", timeout_s=60)
        return replica

    return make


def _compile_servers() -> set[int]:
    """This test process's grammar compile servers (models.decoding.grammar_server, a child of the replica's engine)."""
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if "models.decoding.grammar_server" in " ".join(child.cmdline()):
                found.add(child.pid)
        except psutil.NoSuchProcess:  # ended between the listing and the look
            continue
    return found


def test_a_replica_is_ready_only_once_its_compile_server_answers_and_stops_it_on_close():
    before = _compile_servers()
    replica = ModelReplica(resolve_app(load_app_config({})), "cpu")  # jobs on, by default: their segments ask for JSON
    try:
        wait_for_condition(lambda: replica.describe()["state"] == "ready", timeout_s=60)

        started = _compile_servers() - before  # at once: no request sent, nothing waited for past ready
        assert len(started) == 1
        compiler = replica._engine._grammars._process
        assert compiler.server_pid in started  # the early server, taken by the engine: json_object compiled on it
        assert compiler._tokenizer_info is not None
    finally:
        replica.close()
    wait_for_condition(lambda: not (_compile_servers() & started), timeout_s=30)


def test_a_replica_without_jobs_starts_no_compile_server():
    before = _compile_servers()
    replica = ModelReplica(resolve_app(load_app_config({"jobs": {"enabled": False}})), "cpu")
    try:
        wait_for_condition(lambda: replica.describe()["state"] == "ready", timeout_s=60)

        assert _compile_servers() - before == set()
    finally:
        replica.close()


def test_a_cpu_replica_loads_in_the_background_and_answers(ready_cpu_replica):
    replica = ready_cpu_replica()

    answer = generate(replica, REQUEST)

    assert answer.served_by.group == "cpu"
    assert answer.served_by.precision == "fp32"
    assert answer.result.completion_tokens >= 1
    assert answer.predicted_bytes > 0
    batching = replica.describe()["batching"]
    assert batching["mode"] == "continuous"
    assert batching["headroom_bytes"] > 0
    # Given back when the request left the batch (just after its answer was sent).
    wait_for_condition(lambda: replica.describe()["batching"]["admitted_bytes"] == 0, timeout_s=10)
    assert replica.describe()["streams_cancelled"] == 0  # an answered request is not a cancelled one


def test_a_gpu_replica_without_a_gpu_waits_for_memory_instead_of_failing(monkeypatch, replicas):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # what no driver looks like here
    replica = ModelReplica(resolve_app(load_app_config({"gpu_group": {"load_retry_period_s": 0.2}})), "gpu")
    replicas.append(replica)
    wait_for_condition(lambda: replica.describe()["load_attempts"] >= 2, timeout_s=60)

    description = replica.describe()
    assert description["state"] == "waiting_for_memory"
    assert "No GPU 0 visible" in description["reason"]
    replica.check_health()  # waiting is not something a restart mends
    with pytest.raises(ReplicaUnavailableError, match="waiting_for_memory"):
        generate(replica, REQUEST)


def test_a_loader_that_fails_unexpectedly_makes_the_replica_failed_and_health_fail(monkeypatch, replicas):
    def broken_load(*args, **kwargs):
        raise KeyError("a bug in the loading code")

    monkeypatch.setattr("deployments.replica.loader.load_adapter", broken_load)
    replica = ModelReplica(resolve_app(load_app_config({})), "cpu")
    replicas.append(replica)
    wait_for_condition(lambda: replica.describe()["state"] == "failed", timeout_s=30)

    assert "the loader failed unexpectedly: KeyError" in replica.describe()["reason"]
    with pytest.raises(RuntimeError, match="loader failed unexpectedly"):
        replica.check_health()


def test_concurrent_requests_share_decode_steps_and_each_gets_its_own_answer(ready_cpu_replica):
    replica = ready_cpu_replica(max_batch_size=4)
    requests = [
        GenerationRequest(messages=(ChatMessage("user", (TextPart(f"question {i}"),)),), max_new_tokens=n)
        for i, n in enumerate((40, 3, 25, 8))
    ]
    alone = [generate(replica, request).result for request in requests]

    async def together():
        return await asyncio.gather(*(replica.generate(request) for request in requests))

    answers = asyncio.run(together())

    assert [answer.result for answer in answers] == alone
    assert replica.describe()["batching"]["peak_batch_size"] >= 2


def test_on_the_cpu_a_videos_frames_and_tensors_are_in_the_batch_price_until_it_leaves(ready_cpu_replica):
    replica = ready_cpu_replica()
    frames = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    video = GenerationRequest(messages=(ChatMessage("user", (VideoPart(frames), TextPart("what happens?"))),),
                              max_new_tokens=3)
    text_only = generate(replica, REQUEST).predicted_bytes

    answer = generate(replica, video)

    # Its prediction holds the 8 frames (98304 bytes) and the processor's pixel values beside its KV cache.
    assert answer.predicted_bytes > text_only + frames.nbytes
    batching = replica.describe()["batching"]
    assert batching["peak_admitted_bytes"] >= answer.predicted_bytes
    wait_for_condition(lambda: replica.describe()["batching"]["admitted_bytes"] == 0, timeout_s=10)
    assert replica.describe()["batching"]["waiting_input_bytes"] == 0


def test_a_request_whose_sampling_fails_ends_alone_and_its_batch_goes_on(monkeypatch, ready_cpu_replica):
    replica = ready_cpu_replica(max_batch_size=4)
    requests = [
        GenerationRequest(messages=(ChatMessage("user", (TextPart(f"question {i}"),)),), max_new_tokens=tokens)
        for i, tokens in enumerate((12, 13, 12))
    ]
    alone = [generate(replica, request).result for request in (requests[0], requests[2])]
    real_next_token = TokenSampler.next_token

    def failing_for_the_13_token_request(self, logits):
        if self._max_new_tokens == 13 and len(self._generated) == 3:  # mid-answer, in a shared decode step
            raise RuntimeError("this request's sampling broke")
        return real_next_token(self, logits)

    monkeypatch.setattr(TokenSampler, "next_token", failing_for_the_13_token_request)

    async def together():
        return await asyncio.gather(*(replica.generate(request) for request in requests), return_exceptions=True)

    first, broken, third = asyncio.run(together())

    assert isinstance(broken, RuntimeError) and "sampling broke" in str(broken)
    assert [first.result, third.result] == alone
    assert replica.describe()["batching"]["peak_batch_size"] >= 2
    assert generate(replica, REQUEST).result.completion_tokens >= 1


def _prefill_out_of_memory(request):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")


def test_out_of_memory_on_a_request_is_absorbed_and_the_replica_keeps_serving(monkeypatch, ready_cpu_replica):
    replica = ready_cpu_replica()
    monkeypatch.setattr("models.engines.transformers.hf_batch_model.raise_if_simulated_out_of_memory", _prefill_out_of_memory)

    with pytest.raises(RequestOutOfMemoryError, match="ran out of memory with 0 frames and 0 images"):
        generate(replica, REQUEST)

    monkeypatch.undo()
    assert generate(replica, REQUEST).result.completion_tokens >= 1
    assert replica.describe()["request_out_of_memory"] == 1
    replica.check_health()


def test_recurring_out_of_memory_under_the_headroom_floor_fails_health(monkeypatch, ready_cpu_replica):
    replica = ready_cpu_replica(health_min_headroom_bytes=10**15)  # more than any host has
    monkeypatch.setattr("models.engines.transformers.hf_batch_model.raise_if_simulated_out_of_memory", _prefill_out_of_memory)
    for _ in range(2):
        with pytest.raises(RequestOutOfMemoryError):
            generate(replica, REQUEST)
    replica.check_health()  # two are not yet "recurring"

    with pytest.raises(RequestOutOfMemoryError):
        generate(replica, REQUEST)

    with pytest.raises(RuntimeError, match="3 requests ran out of memory within 60 s and headroom is"):
        replica.check_health()


def test_out_of_memory_in_a_batched_decode_step_splits_the_batch_and_shrinks_no_one(ready_cpu_replica):
    replica = ready_cpu_replica(max_batch_size=4)
    engine = replica._engine._steps
    decode = engine.decode

    def decode_one_row_at_a_time(batch):
        if batch.size > 1:  # the device fits one row's step, not two
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return decode(batch)

    requests = [_video_request(4, seed=index, max_new_tokens=12) for index in range(3)]
    alone = [generate(replica, request).result for request in requests]
    engine.decode = decode_one_row_at_a_time

    async def together():
        return await asyncio.gather(*(replica.generate(request) for request in requests))

    answers = asyncio.run(together())

    assert [answer.result for answer in answers] == alone
    assert all(answer.oom_retries == () for answer in answers)  # innocent requests are never shrunk
    assert all(answer.used.video_frames == 4 for answer in answers)
    assert replica.describe()["batching"]["decode_splits"] >= 1


def test_unload_makes_health_fail_and_requests_unavailable(ready_cpu_replica):
    replica = ready_cpu_replica()

    replica.unload()

    with pytest.raises(ReplicaUnavailableError):
        generate(replica, REQUEST)
    with pytest.raises(RuntimeError, match="the model is gone"):
        replica.check_health()


def _video_request(frames: int, height: int = 48, width: int = 64, *, seed: int = 0, max_new_tokens: int = 2) -> GenerationRequest:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(frames, height, width, 3), dtype=np.uint8)
    video = VideoPart(frames=pixels, timestamps_s=tuple(float(i) for i in range(frames)))
    return GenerationRequest(messages=(ChatMessage("user", (video, TextPart("What is it?"))),), max_new_tokens=max_new_tokens)


def test_out_of_memory_retries_with_half_the_frames_and_pixels_until_it_fits(monkeypatch, ready_cpu_replica):
    # 8 frames of 64x48 = 24576 pixels; generation "runs out of memory" above 5000.
    monkeypatch.setenv(SIMULATE_OOM_ABOVE_PIXELS_ENV, "5000")
    replica = ready_cpu_replica(request_oom={"min_frames": 2, "min_pixels_per_frame": 1000})

    answer = generate(replica, _video_request(8))

    assert [(r.before.video_frames, r.after.video_frames) for r in answer.oom_retries] == [(8, 4), (4, 2)]
    assert answer.oom_retries[0].after.max_pixels_per_frame <= 3072 // 2
    assert answer.used.video_frames * answer.used.max_pixels_per_frame <= 5000
    assert answer.used_timestamps_s == (0.0, 7.0)
    assert answer.result.completion_tokens >= 1
    assert replica.describe()["request_out_of_memory"] == 2
    # The replica serves on, at full size when the request fits.
    assert generate(replica, _video_request(2, 32, 32)).oom_retries == ()


def test_out_of_memory_at_the_floor_hands_the_request_off_with_the_numbers(monkeypatch, ready_cpu_replica):
    replica = ready_cpu_replica(request_oom={"min_frames": 2, "min_pixels_per_frame": 1000})
    # Set once the replica is ready: its warm-up image (64 x 64) would run out of memory too.
    monkeypatch.setenv(SIMULATE_OOM_ABOVE_PIXELS_ENV, "1000")

    with pytest.raises(RequestOutOfMemoryError, match=r"ran out of memory with 2 frames .* at the minimum of 2 frames and 1000 pixels, after 2 smaller retries"):
        generate(replica, _video_request(8))

    assert replica.describe()["request_out_of_memory"] == 3
    replica.check_health()


def test_a_request_predicted_over_the_headroom_is_shrunk_up_front_never_tried(ready_cpu_replica):
    replica = ready_cpu_replica(request_oom={"min_frames": 2, "min_pixels_per_frame": 1000})
    scheduler = replica._engine
    big, small = _video_request(8, 96, 128), _video_request(2, 48, 64)
    cost_of = lambda request: scheduler._predict(scheduler._steps.prepare(request)).total_bytes  # noqa: E731
    scheduler._limits = type(scheduler._limits)(
        max_batch_size=4, max_waiting=16, headroom_bytes=(cost_of(big) + cost_of(small)) // 2
    )

    answer = generate(replica, big)

    assert answer.oom_retries and answer.oom_retries[0].freed_bytes == 0  # shrunk before it ran, not after a failure
    assert answer.used.video_frames < 8
    assert answer.predicted_bytes <= scheduler._limits.headroom_bytes
    assert replica.describe()["request_out_of_memory"] == 0


def _collect_stream(replica: ModelReplica, request: GenerationRequest) -> list:
    async def collect() -> list:
        return [item async for item in replica.generate_stream(request)]

    return asyncio.run(collect())


def test_a_stream_yields_opened_text_and_the_answer(ready_cpu_replica):
    replica = ready_cpu_replica()

    items = _collect_stream(replica, _video_request(2, max_new_tokens=6))

    opened, *pieces, answer = items
    assert isinstance(opened, StreamOpened) and opened.used.video_frames == 2
    assert all(isinstance(piece, TextDelta) for piece in pieces)
    assert isinstance(answer, ReplicaAnswer)
    assert "".join(piece.text for piece in pieces) == answer.result.text


def test_a_stream_that_runs_out_of_memory_before_its_first_token_is_retried_smaller(monkeypatch, ready_cpu_replica):
    monkeypatch.setenv(SIMULATE_OOM_ABOVE_PIXELS_ENV, "5000")
    replica = ready_cpu_replica(request_oom={"min_frames": 2, "min_pixels_per_frame": 1000})

    items = _collect_stream(replica, _video_request(8))

    opened = items[0]
    assert isinstance(opened, StreamOpened)
    assert opened.used.video_frames == 2
    assert isinstance(items[-1], ReplicaAnswer) and items[-1].result.completion_tokens == 2
    assert replica.describe()["request_out_of_memory"] == 2


def test_a_stream_that_runs_out_of_memory_mid_answer_ends_with_an_error_and_is_not_restarted(ready_cpu_replica):
    replica = ready_cpu_replica()
    engine = replica._engine._steps
    decode, steps = engine.decode, []

    def out_of_memory_on_the_third_step(batch):
        steps.append(batch.size)
        if len(steps) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return decode(batch)

    engine.decode = out_of_memory_on_the_third_step

    with pytest.raises((StreamOutOfMemoryError, RequestOutOfMemoryError), match="mid-answer"):
        _collect_stream(replica, _video_request(2, max_new_tokens=20))

    assert len(steps) == 3  # the answer was not started again
    engine.decode = decode
    assert generate(replica, REQUEST).result.completion_tokens >= 1


def test_an_unloaded_replica_says_so_to_every_reader_at_once(ready_cpu_replica):
    replica = ready_cpu_replica()
    assert replica.record_routing_stats() == {READY_STAT: True, MEDIA_STAT: []}
    assert replica.record_autoscaling_stats()[READY_METRIC] == 1.0

    replica.unload()

    description = replica.describe()
    assert (description["state"], description["serving"], description["batching"]) == ("unloaded", False, None)
    assert replica.record_routing_stats() == {READY_STAT: False, MEDIA_STAT: []}
    assert replica.record_autoscaling_stats()[READY_METRIC] == 0.0
    with pytest.raises(ReplicaUnavailableError, match="is unloaded"):
        asyncio.run(replica.ping())
    with pytest.raises(RuntimeError, match="is unloaded"):
        replica.check_health()


def test_a_replica_whose_constructor_fails_half_way_cleans_up_without_a_second_error(tmp_path):
    unraisable = []
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        (tmp_path / "config.json").write_text("{not json")
        plan = resolve_app(load_app_config({}))
        broken = plan.config.model_copy(update={"model": plan.config.model.model_copy(update={"source": str(tmp_path)})})
        plan = dataclasses.replace(plan, config=broken)
        replica = ModelReplica.__new__(ModelReplica)
        with pytest.raises(Exception, match="config.json|Expecting|JSON|json"):
            replica.__init__(plan, "cpu")
        replica.close()
        del replica
        gc.collect()
    finally:
        sys.unraisablehook = previous_hook

    assert unraisable == []


def test_interactive_requests_overtake_queued_background_ones(ready_cpu_replica):
    from models.requests import DecodingOptions

    replica = ready_cpu_replica(max_batch_size=1)  # one row: the queue's order is the order answers end in
    long = dataclasses.replace(REQUEST, max_new_tokens=400, options=DecodingOptions(ignore_eos=True))
    background = dataclasses.replace(REQUEST, priority=1)

    async def run() -> list[str]:
        ended: list[str] = []

        async def ask(name: str, request: GenerationRequest, delay_s: float) -> None:
            await asyncio.sleep(delay_s)
            await replica.generate(request)
            ended.append(name)

        await asyncio.gather(ask("long", long, 0), ask("segment 1", background, 0.2), ask("segment 2", background, 0.25),
                             ask("chat", REQUEST, 0.3))
        return ended

    assert asyncio.run(run()) == ["long", "chat", "segment 1", "segment 2"]


def test_a_link_that_loads_but_cannot_generate_hands_over_to_the_next_and_is_never_ready(monkeypatch, replicas):
    from models.fault_injection import SIMULATE_BROKEN_LINKS_ENV

    monkeypatch.setenv(SIMULATE_BROKEN_LINKS_ENV, "fp32")
    replica = ModelReplica(resolve_app(load_app_config({"cpu_group": {"chain": ["fp32", "bf16"]}})), "cpu")
    replicas.append(replica)
    wait_for_condition(lambda: replica.describe()["state"] == "ready", timeout_s=60)

    attempts = replica.describe()["load_report"]["attempts"]
    assert [(attempt["strategy"], attempt["outcome"]) for attempt in attempts] == [("fp32", "unusable"), ("bf16", "loaded")]
    assert "warm-up generation failed: AttributeError" in attempts[0]["reason"]
    assert generate(replica, REQUEST).served_by.precision == "bf16"


def test_a_replica_whose_every_link_cannot_generate_fails_and_never_serves(monkeypatch, replicas):
    from models.fault_injection import SIMULATE_BROKEN_LINKS_ENV

    monkeypatch.setenv(SIMULATE_BROKEN_LINKS_ENV, "fp32,bf16")
    replica = ModelReplica(resolve_app(load_app_config({"cpu_group": {"chain": ["fp32", "bf16"]}})), "cpu")
    replicas.append(replica)
    wait_for_condition(lambda: replica.describe()["state"] != "loading", timeout_s=60)

    described = replica.describe()
    assert described["state"] == "failed" and not described["serving"]
    assert {attempt["outcome"] for attempt in described["load_report"]["attempts"]} == {"unusable"}
    with pytest.raises(RuntimeError, match="loaded but could not serve"):
        replica.check_health()
    with pytest.raises(ReplicaUnavailableError, match="failed"):
        generate(replica, REQUEST)
    assert replica.record_routing_stats() == {READY_STAT: False, MEDIA_STAT: []}
