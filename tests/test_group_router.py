"""GroupRouter's rules with a small stand-in for Serve's handle (pure routing logic, no cluster).

The stand-in plays a replica's stream as a script: ``REACHED`` where Serve has placed the call on a replica
that took it, items to yield, delays before them, or an error to raise; it records whether the router
cancelled it.
"""

import asyncio

import pytest
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from test_circuit_breaker import Clock

from deployments.replica.protocol import ReplicaAnswer, ServedBy, StreamOpened
from deployments.routing.breaker import CircuitBreaker
from deployments.routing.router import GroupRouter, GroupTimeouts, NoGroupAvailableError
from models.errors import PromptTooLongError, ReplicaBusyError, RequestOutOfMemoryError, SchedulerClosedError
from models.media.request_shrink import RequestSize
from models.requests import GenerationResult, TextDelta

pytestmark = pytest.mark.unit

SIZE = RequestSize(video_frames=0, images=0, max_pixels_per_frame=0)
REACHED = "reached"  # Serve placed the call on a replica that took it (``_to_object_ref_gen`` returns)


def _script(group: str) -> list:
    served_by = ServedBy(group=group, replica="r1", precision="fp32", device="cpu")
    result = GenerationResult(text="ok", prompt_tokens=3, completion_tokens=1, finish_reason="stop")
    return [
        REACHED,
        StreamOpened(served_by=served_by, used=SIZE),
        TextDelta("ok"),
        ReplicaAnswer(result=result, served_by=served_by, inference_seconds=0.01, used=SIZE),
    ]


class Stream:
    def __init__(self, steps: list) -> None:
        self._steps = list(steps)
        self.cancelled = False

    async def _to_object_ref_gen(self):
        """Serve's placement: the steps up to ``REACHED``, or an error raised before it (Serve's own, such as
        back-pressure, or a replica's)."""
        while self._steps:
            step = self._steps.pop(0)
            if step == REACHED:
                return None
            if isinstance(step, float):
                await asyncio.sleep(step)
            elif isinstance(step, BaseException):
                raise step
            else:
                raise AssertionError(f"the script yields {step!r} before the call was placed")
        raise AssertionError("the script ended before the call was placed")

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self._steps:
            raise StopAsyncIteration
        step = self._steps.pop(0)
        if isinstance(step, float):  # a pause, then the next step
            await asyncio.sleep(step)
            return await self.__anext__()
        if isinstance(step, BaseException):
            raise step
        return step

    def cancel(self) -> None:
        self.cancelled = True


class Ping:
    """A ``ping`` call's response: awaitable once, cancellable."""

    def __init__(self, steps: list) -> None:
        self._steps = steps

    def __await__(self):
        return self._run().__await__()

    async def _run(self):
        for step in self._steps:
            if isinstance(step, float):
                await asyncio.sleep(step)
            elif isinstance(step, BaseException):
                raise step
            else:
                return step

    def cancel(self) -> None:
        pass


class Handle:
    """``handle.options(...).remote(...)`` returning scripted streams, one per call, in order; ``ping`` calls
    play ``pings``: each item a pause (float) before the next, an error to raise, or the answer."""

    def __init__(self, *scripts: list, pings: list | None = None) -> None:
        self._scripts = list(scripts)
        self.streams: list[Stream] = []
        self._pings = _split_pings(pings or [])
        self.pings: list[float] = []  # each ping's wait_ready_s
        self._method = None

    def options(self, **kwargs):
        self._method = kwargs.get("method_name")
        return self

    def remote(self, *args, **kwargs):
        if self._method == "ping":
            self.pings.append(kwargs.get("wait_ready_s", 0.0))
            return Ping(self._pings.pop(0))
        stream = Stream(self._scripts.pop(0) if len(self._scripts) > 1 else self._scripts[0])
        self.streams.append(stream)
        return stream


def _split_pings(items: list) -> list[list]:
    """One list of steps per ping: pauses up to and including the answer or error that ends it."""
    pings, current = [], []
    for item in items:
        current.append(item)
        if not isinstance(item, float):
            pings.append(current)
            current = []
    return pings


def _router(gpu: Handle | None, cpu: Handle | None, clock: Clock | None = None, **timeouts) -> GroupRouter:
    return GroupRouter(
        gpu,
        cpu,
        gpu_timeouts=GroupTimeouts(reach_s=timeouts.get("reach_s", 0.5), admission_s=timeouts.get("admission_s", 0.5)),
        cpu_timeouts=GroupTimeouts(reach_s=2.0, admission_s=2.0),
        breaker=CircuitBreaker(cooldown_s=10, clock=clock or Clock()),
    )


def _call(router: GroupRouter) -> ReplicaAnswer:
    return asyncio.run(router.call("generate_stream", "request"))


def test_a_healthy_gpu_group_answers_and_the_cpu_group_is_not_called():
    gpu, cpu = Handle(_script("gpu")), Handle(_script("cpu"))

    answer = _call(_router(gpu, cpu))

    assert answer.served_by.group == "gpu"
    assert cpu.streams == []


def test_a_long_generation_after_admission_is_never_timed_out():
    script = _script("gpu")
    script.insert(2, 1.5)  # three times the admission timeout, after the first token
    gpu, cpu = Handle(script), Handle(_script("cpu"))

    answer = _call(_router(gpu, cpu, admission_s=0.5))

    assert answer.served_by.group == "gpu"
    assert cpu.streams == []


def test_a_gpu_group_that_takes_no_call_is_broken_the_call_moves_and_the_breaker_opens():
    gpu, cpu = Handle([2.0, *_script("gpu")]), Handle(_script("cpu"))
    router = _router(gpu, cpu, reach_s=0.2)

    answer = _call(router)

    assert answer.served_by.group == "cpu"
    assert gpu.streams[0].cancelled
    assert router.breaker.state == "open"
    assert "took no call within 0.2 s" in router.breaker.last_reason


def test_a_gpu_group_that_does_not_admit_in_time_is_busy_its_call_is_cancelled_and_the_breaker_stays_closed():
    script = _script("gpu")
    script.insert(1, 2.0)  # accepted, then queued past the admission timeout
    gpu, cpu = Handle(script), Handle(_script("cpu"))
    router = _router(gpu, cpu, admission_s=0.2)

    answer = _call(router)

    assert answer.served_by.group == "cpu"
    assert gpu.streams[0].cancelled  # the replica takes it out of its queue
    assert router.breaker.state == "closed"


@pytest.mark.parametrize("error", [BackPressureError(num_queued_requests=32, max_queued_requests=32), ReplicaBusyError("full"),
                                   RequestOutOfMemoryError("too big")])
def test_busy_errors_move_the_call_without_opening_the_breaker(error):
    gpu, cpu = Handle([error]), Handle(_script("cpu"))
    router = _router(gpu, cpu)

    assert _call(router).served_by.group == "cpu"
    assert router.breaker.state == "closed"


def test_both_groups_busy_is_a_busy_503():
    busy = BackPressureError(num_queued_requests=32, max_queued_requests=32)
    router = _router(Handle([busy]), Handle([ReplicaBusyError("full")]))

    with pytest.raises(NoGroupAvailableError) as raised:
        _call(router)

    assert raised.value.busy
    assert "busy" in str(raised.value)


def test_a_broken_gpu_group_and_a_busy_cpu_group_is_not_reported_as_busy():
    router = _router(Handle([DeploymentUnavailableError("gpu_group")]), Handle([ReplicaBusyError("full")]))

    with pytest.raises(NoGroupAvailableError) as raised:
        _call(router)

    assert not raised.value.busy


def test_an_open_breaker_is_probed_in_the_background_and_no_call_waits_on_the_group():
    clock = Clock()
    gpu = Handle(_script("gpu"), pings=[0.3, {"group": "gpu", "replica": "r1", "precision": "fp32"}])
    router = _router(gpu, Handle(_script("cpu")), clock)
    router.breaker.record_failure("earlier outage")
    clock.advance(11)  # past the cooldown

    async def scenario():
        started = asyncio.get_running_loop().time()
        first = await router.call("generate_stream", "request")
        first_seconds = asyncio.get_running_loop().time() - started
        await _until(lambda: router.breaker.state == "closed")
        return first, first_seconds, await router.call("generate_stream", "request")

    first, first_seconds, second = asyncio.run(scenario())

    assert first.served_by.group == "cpu" and first_seconds < 0.25  # not held by the 0.3 s probe
    assert gpu.streams == [gpu.streams[0]] and second.served_by.group == "gpu"  # no client call was the probe
    assert gpu.pings == [0.0]  # a plain ping: no waiting for a load


def test_a_probe_that_fails_reopens_the_breaker_and_later_probes_still_happen():
    clock = Clock()
    gpu = Handle(_script("gpu"), pings=[DeploymentUnavailableError("gpu_group"), {"replica": "r1"}])
    router = _router(gpu, Handle(_script("cpu")), clock)
    router.breaker.record_failure("earlier outage")

    async def scenario():
        clock.advance(11)
        assert (await router.call("generate_stream", "request")).served_by.group == "cpu"
        await _until(lambda: len(gpu.pings) == 1 and not router.breaker.probing)
        assert router.breaker.state == "open" and "probe: DeploymentUnavailableError" in router.breaker.last_reason
        assert (await router.call("generate_stream", "request")).served_by.group == "cpu"  # still cooling down
        assert len(gpu.pings) == 1
        clock.advance(11)
        await router.call("generate_stream", "request")
        await _until(lambda: router.breaker.state == "closed")
        return await router.call("generate_stream", "request")

    assert asyncio.run(scenario()).served_by.group == "gpu"


def _floor_router(gpu: Handle, floor: Handle, cpu: Handle, spills: list, fallbacks: list) -> GroupRouter:
    return GroupRouter(
        gpu,
        cpu,
        gpu_timeouts=GroupTimeouts(reach_s=0.5, admission_s=0.5),
        cpu_timeouts=GroupTimeouts(reach_s=2.0, admission_s=2.0),
        breaker=CircuitBreaker(cooldown_s=10, clock=Clock()),
        gpu_floor_group=floor,
        on_spill=spills.append,
        on_fallback=fallbacks.append,
    )


BUSY = BackPressureError(num_queued_requests=32, max_queued_requests=32)


def test_a_busy_gpu_group_wakes_the_floor_replicas_and_later_calls_spill_to_them():
    spills, fallbacks = [], []
    floor = Handle(_script("gpu_floor"), pings=[0.2, {"group": "gpu_floor", "replica": "f1", "precision": "int8"}])
    router = _floor_router(Handle([BUSY]), floor, Handle(_script("cpu")), spills, fallbacks)
    router.set_running_replicas("gpu_floor", 0)  # scaled to zero

    async def scenario():
        first = await router.call("generate_stream", "request")  # while the floor replica starts
        router.set_running_replicas("gpu_floor", 1)
        await _until(lambda: router.is_awake("gpu_floor"))
        return first, await router.call("generate_stream", "request")

    first, second = asyncio.run(scenario())

    assert first.served_by.group == "cpu" and second.served_by.group == "gpu_floor"
    assert floor.pings[0] > 0  # the wake waits for the replica's load
    assert len(floor.streams) == 1  # only the second call went there
    assert len(spills) == 1 and spills[0].startswith("busy: BackPressureError")
    assert len(fallbacks) == 1 and fallbacks[0].startswith("busy: BackPressureError")


def test_a_broken_gpu_group_does_not_wake_the_floor_replicas():
    floor = Handle(_script("gpu_floor"), pings=[{"replica": "f1"}])
    router = _floor_router(Handle([DeploymentUnavailableError("gpu_group")]), floor, Handle(_script("cpu")), [], [])

    answer = _call(router)

    assert answer.served_by.group == "cpu"
    assert floor.pings == [] and floor.streams == []


def test_a_broken_floor_replica_opens_the_floor_breaker_only_and_sleeps_until_woken_again():
    floor = Handle([DeploymentUnavailableError("gpu_floor_group")], pings=[{"replica": "f1"}])
    router = _floor_router(Handle([BUSY]), floor, Handle(_script("cpu")), [], [])

    async def scenario():
        await router.call("generate_stream", "request")  # wakes it
        await _until(lambda: router.is_awake("gpu_floor"))
        return await router.call("generate_stream", "request")

    answer = asyncio.run(scenario())

    assert answer.served_by.group == "cpu"
    assert len(floor.streams) == 1
    assert router.breaker_states() == {"gpu": "closed", "gpu_floor": "open"}


def test_a_floor_group_with_nothing_running_is_asleep_again():
    floor = Handle(_script("gpu_floor"), pings=[{"replica": "f1"}, {"replica": "f2"}])
    router = _floor_router(Handle([BUSY]), floor, Handle(_script("cpu")), [], [])

    async def scenario():
        await router.call("generate_stream", "request")
        await _until(lambda: router.is_awake("gpu_floor"))
        router.set_running_replicas("gpu_floor", 0)  # scaled in
        answer = await router.call("generate_stream", "request")
        await _until(lambda: len(floor.pings) == 2)
        return answer

    assert asyncio.run(scenario()).served_by.group == "cpu"
    assert floor.streams == []


async def _until(condition, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def test_the_stream_opens_on_the_first_token_and_the_rest_follows():
    gpu = Handle(_script("gpu"))

    async def open_and_read():
        opened, stream = await _router(gpu, Handle(_script("cpu"))).open_stream("generate_stream", "request")
        return opened, [item async for item in stream]

    opened, rest = asyncio.run(open_and_read())

    assert opened.served_by.group == "gpu"
    assert isinstance(rest[0], TextDelta) and isinstance(rest[-1], ReplicaAnswer)


@pytest.mark.parametrize("death", [ActorDiedError(), SchedulerClosedError("the model is being unloaded")])
def test_a_gpu_replica_that_dies_after_admission_is_answered_again_by_the_cpu_group_and_opens_the_breaker(death):
    script = _script("gpu")
    script[2] = death  # admitted, first token out, then the replica is gone
    gpu, cpu = Handle(script), Handle(_script("cpu"))
    router = _router(gpu, cpu)

    answer = _call(router)

    assert answer.served_by.group == "cpu"
    assert len(cpu.streams) == 1
    assert router.breaker.state == "open"
    assert "replica r1 ended mid-call" in router.breaker.last_reason


def test_a_request_fault_after_admission_is_not_retried_on_the_cpu_group():
    script = _script("gpu")
    script[2] = PromptTooLongError("too long")
    gpu, cpu = Handle(script), Handle(_script("cpu"))
    router = _router(gpu, cpu)

    with pytest.raises(PromptTooLongError):
        _call(router)

    assert cpu.streams == []
    assert router.breaker.state == "closed"


def _scale_to_zero_router(gpu: Handle, floor: Handle | None, cpu: Handle, fallbacks: list) -> GroupRouter:
    return GroupRouter(
        gpu, cpu, gpu_timeouts=GroupTimeouts(reach_s=0.5, admission_s=0.5), cpu_timeouts=GroupTimeouts(reach_s=2.0, admission_s=2.0),
        breaker=CircuitBreaker(cooldown_s=10, clock=Clock()), gpu_floor_group=floor, on_fallback=fallbacks.append,
        gpu_scales_to_zero=True,
    )


def test_a_gpu_group_scaled_to_zero_is_woken_by_a_call_and_takes_calls_once_loaded():
    fallbacks = []
    gpu = Handle(_script("gpu"), pings=[0.2, {"group": "gpu", "replica": "g1", "precision": "bf16"}])
    floor = Handle(_script("gpu_floor"), pings=[{"replica": "f1"}])
    router = _scale_to_zero_router(gpu, floor, Handle(_script("cpu")), fallbacks)
    router.set_running_replicas("gpu", 0)
    router.set_running_replicas("gpu_floor", 0)

    async def scenario():
        first = await router.call("generate_stream", "request")  # while the GPU replica starts and loads
        router.set_running_replicas("gpu", 1)
        await _until(lambda: router.is_awake("gpu"))
        return first, await router.call("generate_stream", "request")

    first, second = asyncio.run(scenario())

    assert first.served_by.group == "cpu" and second.served_by.group == "gpu"
    assert len(gpu.pings) == 1 and gpu.pings[0] > 0  # one wake, waiting for the load
    assert len(gpu.streams) == 1  # no client's call went to the sleeping group
    assert floor.pings == [] and floor.streams == []  # asleep is not busy: the floor stays at zero
    assert router.breaker_states() == {"gpu": "closed", "gpu_floor": "closed"}  # asleep is not broken
    assert len(fallbacks) == 1 and fallbacks[0].startswith("asleep (min_replicas: 0)")


def test_a_gpu_group_that_scales_to_zero_sleeps_again_when_its_last_replica_goes():
    gpu = Handle(_script("gpu"), pings=[{"replica": "g1"}, 5.0, {"replica": "g2"}])
    router = _scale_to_zero_router(gpu, None, Handle(_script("cpu")), [])

    async def scenario():
        await router.call("generate_stream", "request")
        await _until(lambda: router.is_awake("gpu"))
        served = await router.call("generate_stream", "request")
        router.set_running_replicas("gpu", 0)  # the downscale delay passed with no traffic
        return served, await router.call("generate_stream", "request")

    served, after = asyncio.run(scenario())

    assert served.served_by.group == "gpu" and after.served_by.group == "cpu"
    assert len(gpu.pings) == 2  # the call after the scale-in woke it again


@pytest.mark.parametrize("gpu_running, cpu_always_runs, warmed", [
    (1, True, ["gpu", "cpu"]),
    (0, True, ["cpu"]),  # a GPU group with no replica (unschedulable) is not called
    (None, False, []),  # not known yet, and a CPU group that may be at zero: nothing is called, nothing is woken
])
def test_a_warm_up_pings_the_groups_that_run_and_wakes_none_that_sleep(gpu_running, cpu_always_runs, warmed):
    gpu = Handle(_script("gpu"), pings=[{"replica": "g1"}])
    floor = Handle(_script("gpu_floor"), pings=[{"replica": "f1"}])
    cpu = Handle(_script("cpu"), pings=[ReplicaBusyError("still loading")])  # its answer does not matter
    router = _floor_router(gpu, floor, cpu, [], [])
    router.set_running_replicas("gpu", gpu_running)
    router.set_running_replicas("gpu_floor", 1)  # the floor scales from zero: never pinged awake by a warm-up

    pinged = asyncio.run(router.warm_up(cpu_group_always_runs=cpu_always_runs))

    assert pinged == warmed
    assert (len(gpu.pings), len(floor.pings), len(cpu.pings)) == (warmed.count("gpu"), 0, warmed.count("cpu"))


def test_the_groups_are_one_mapping_by_name_in_routing_order():
    from deployments.routing.groups import in_routing_order

    assert list(in_routing_order({"cpu": "c", "gpu_floor": None, "gpu": "g"}).items()) == [("gpu", "g"), ("cpu", "c")]
    with pytest.raises(ValueError, match=r"Unknown replica groups \['gpu2'\]; the groups are \['gpu', 'gpu_floor', 'cpu'\]"):
        in_routing_order({"gpu2": "g"})
