"""GroupRouter's rules with a small stand-in for Serve's handle (pure routing logic, no cluster).

The stand-in plays a replica's stream as a script: items to yield, delays before them, or an
error to raise; it records whether the router cancelled it.
"""

import asyncio

import pytest
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from deployments.replica_protocol import Accepted, ReplicaAnswer, ServedBy, StreamOpened
from deployments.router import CircuitBreaker, GroupRouter, GroupTimeouts, NoGroupAvailableError
from models.errors import PromptTooLongError, ReplicaBusyError, RequestOutOfMemoryError, SchedulerClosedError
from models.request_shrink import RequestSize
from models.requests import GenerationResult, TextDelta
from test_circuit_breaker import Clock

SIZE = RequestSize(video_frames=0, images=0, max_pixels_per_frame=0)


def _script(group: str) -> list:
    served_by = ServedBy(group=group, replica="r1", precision="fp32", device="cpu")
    result = GenerationResult(text="ok", prompt_tokens=3, completion_tokens=1, finish_reason="stop")
    return [
        Accepted(group=group, replica="r1"),
        StreamOpened(served_by=served_by, used=SIZE),
        TextDelta("ok"),
        ReplicaAnswer(result=result, served_by=served_by, inference_seconds=0.01, used=SIZE),
    ]


class Stream:
    def __init__(self, steps: list) -> None:
        self._steps = list(steps)
        self.cancelled = False

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


class Handle:
    """``handle.options(...).remote(...)`` returning scripted streams, one per call, in order."""

    def __init__(self, *scripts: list) -> None:
        self._scripts = list(scripts)
        self.streams: list[Stream] = []

    def options(self, **kwargs):
        return self

    def remote(self, *args, **kwargs) -> Stream:
        stream = Stream(self._scripts.pop(0) if len(self._scripts) > 1 else self._scripts[0])
        self.streams.append(stream)
        return stream


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


@pytest.mark.parametrize("fault", [PromptTooLongError("too long"), asyncio.CancelledError()])
def test_a_probe_that_ends_in_the_requests_own_fault_closes_the_breaker(fault):
    clock = Clock()
    gpu = Handle([Accepted(group="gpu", replica="r1"), fault], _script("gpu"))
    router = _router(gpu, Handle(_script("cpu")), clock)
    router.breaker.record_failure("earlier outage")
    clock.advance(11)  # past the cooldown: the next call probes

    with pytest.raises(type(fault)):
        _call(router)

    assert router.breaker.state == "closed"
    assert not router.breaker.probing
    assert _call(router).served_by.group == "gpu"  # the GPU group takes traffic back


def test_a_probe_that_fails_again_reopens_the_breaker_and_later_probes_still_happen():
    clock = Clock()
    gpu = Handle([DeploymentUnavailableError("gpu_group")], _script("gpu"))
    router = _router(gpu, Handle(_script("cpu")), clock)
    router.breaker.record_failure("earlier outage")
    clock.advance(11)

    assert _call(router).served_by.group == "cpu"
    assert router.breaker.state == "open" and not router.breaker.probing
    clock.advance(11)
    assert _call(router).served_by.group == "gpu"


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
