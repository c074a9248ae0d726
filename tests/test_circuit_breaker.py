import pytest

from deployments.routing.breaker import CircuitBreaker

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_a_failure_opens_the_breaker_for_the_cooldown_then_one_probe_goes_through():
    clock = Clock()
    breaker = CircuitBreaker(cooldown_s=15, clock=clock)
    assert breaker.allows() and breaker.state == "closed"

    breaker.record_failure("no GPU")
    assert breaker.state == "open"
    assert not breaker.allows()
    clock.advance(14.9)
    assert not breaker.allows()

    clock.advance(0.2)
    assert breaker.state == "half-open"
    assert breaker.allows()  # the probe
    assert not breaker.allows()  # only one at a time


def test_a_successful_probe_closes_it():
    clock = Clock()
    breaker = CircuitBreaker(cooldown_s=5, clock=clock)
    breaker.record_failure("timeout")
    clock.advance(5)
    assert breaker.allows()

    breaker.record_success()

    assert breaker.state == "closed" and breaker.allows() and breaker.allows()


def test_a_failed_probe_opens_it_for_another_cooldown():
    clock = Clock()
    breaker = CircuitBreaker(cooldown_s=5, clock=clock)
    breaker.record_failure("timeout")
    clock.advance(5)
    assert breaker.allows()

    breaker.record_failure("still down")

    assert breaker.last_reason == "still down"
    assert not breaker.allows()
    clock.advance(5)
    assert breaker.allows()
