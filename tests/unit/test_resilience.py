"""The circuit breaker against a model of its rules (a hypothesis state machine: any sequence of
calls that succeed, fail with an outage, fail with an answer, are cancelled, and of time passing),
and the bulkhead."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Literal

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ordermesh.clock import FakeClock
from ordermesh.errors import DomainError, InfrastructureError
from ordermesh.resilience import Bulkhead, BulkheadFull, CircuitBreaker, CircuitOpen

THRESHOLD, OPEN_FOR, RATE, WINDOW = 3, 10.0, 0.5, 4
Outcome = Literal["ok", "outage", "answer"]


class BreakerMachine(RuleBasedStateMachine):
    """The model: consecutive outages open it, and so does a failure rate of RATE or more over the
    last WINDOW calls; after OPEN_FOR it lets one probe; a probe's outage opens it again, anything
    else closes it; open, nothing reaches the downstream."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.changes: list[tuple[str, str]] = []
        self.breaker = CircuitBreaker(
            "payments",
            THRESHOLD,
            OPEN_FOR,
            self.clock,
            listener=lambda _name, old, new: self.changes.append((old, new)),
            failure_rate=RATE,
            window=WINDOW,
        )
        self.recent: deque[bool] = deque(maxlen=WINDOW)
        self.model_state = "closed"
        self.streak = 0
        self.opened_at = 0.0
        self.calls_made = 0
        self.calls_expected = 0

    def _model_now(self) -> str:
        if self.model_state == "open" and self.clock.now().timestamp() - self.opened_at >= OPEN_FOR:
            self.model_state = "half_open"
        return self.model_state

    async def _downstream(self, outcome: Outcome) -> str:
        self.calls_made += 1
        if outcome == "outage":
            raise InfrastructureError("payments down")
        if outcome == "answer":
            raise DomainError("declined")
        return "ok"

    @rule(outcome=st.sampled_from(["ok", "outage", "answer"]))
    def call(self, outcome: Outcome) -> None:
        state = self._model_now()
        if state == "open":
            with pytest.raises(CircuitOpen):
                asyncio.run(self.breaker.call(lambda: self._downstream(outcome)))
            return
        self.calls_expected += 1
        expected = {"ok": None, "outage": InfrastructureError, "answer": DomainError}[outcome]
        if expected is None:
            assert asyncio.run(self.breaker.call(lambda: self._downstream(outcome))) == "ok"
        else:
            with pytest.raises(expected):
                asyncio.run(self.breaker.call(lambda: self._downstream(outcome)))
        if state == "half_open":
            self.recent.clear()
        else:
            self.recent.append(outcome == "outage")
        if outcome == "outage":
            self.streak += 1
            rate = len(self.recent) == WINDOW and sum(self.recent) >= RATE * WINDOW
            if state == "half_open" or self.streak >= THRESHOLD or rate:
                self.model_state, self.streak = "open", 0
                self.opened_at = self.clock.now().timestamp()
                self.recent.clear()
        else:
            self.model_state, self.streak = "closed", 0

    @rule()
    def cancelled_call(self) -> None:
        state = self._model_now()

        async def cancelled() -> str:
            raise asyncio.CancelledError

        if state == "open":
            return
        self.calls_expected += 1
        self.calls_made += 1
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(self.breaker.call(cancelled))

    @rule(seconds=st.floats(min_value=0.0, max_value=2 * OPEN_FOR))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.model_state == "half_open")
    @rule()
    def a_second_caller_during_a_probe_is_refused(self) -> None:
        self.breaker.before_call()  # the probe
        with pytest.raises(CircuitOpen):
            self.breaker.before_call()  # while it is out
        self.breaker.on_success()
        self.model_state, self.streak = "closed", 0
        self.recent.clear()

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert self.breaker.current_state() == self._model_now()
        assert self.calls_made == self.calls_expected  # open, nothing reached the downstream
        assert all(old != new for old, new in self.changes)  # each change reported once


TestBreaker = BreakerMachine.TestCase
TestBreaker.settings = settings(max_examples=150, stateful_step_count=40, deadline=None, derandomize=True)


def test_only_outages_open_it_and_it_says_how_long_to_wait() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("inventory", failure_threshold=2, open_for=5.0, clock=clock)

    async def refuse() -> None:
        raise DomainError("short")

    async def fail() -> None:
        raise TimeoutError

    for _ in range(10):
        with pytest.raises(DomainError):
            asyncio.run(breaker.call(refuse))
    assert breaker.current_state() == "closed"  # answers, however many, are not an outage
    for _ in range(2):
        with pytest.raises(TimeoutError):
            asyncio.run(breaker.call(fail))
    clock.advance(2)
    with pytest.raises(CircuitOpen, match=r"next try in 3\.0 s"):
        breaker.before_call()


async def test_a_full_bulkhead_refuses_at_once_instead_of_queueing() -> None:
    bulkhead = Bulkhead("shipping", limit=2)
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "done"

    first = asyncio.create_task(bulkhead.call(slow))
    second = asyncio.create_task(bulkhead.call(slow))
    await asyncio.sleep(0)  # both are in flight
    with pytest.raises(BulkheadFull, match="2 calls already in flight"):
        await bulkhead.call(slow)
    assert (bulkhead.in_flight, bulkhead.rejected) == (2, 1)
    release.set()
    assert await asyncio.gather(first, second) == ["done", "done"]
    assert bulkhead.in_flight == 0 and await bulkhead.call(slow) == "done"


def test_a_failure_rate_over_the_window_opens_it_without_a_streak() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        "payments", failure_threshold=5, open_for=5.0, clock=clock, failure_rate=0.5, window=6
    )

    async def ok() -> None:
        return None

    async def fail() -> None:
        raise InfrastructureError("down")

    for fn in (fail, ok, fail, ok, fail):  # 3 of 5: the window is not full yet
        with contextlib.suppress(InfrastructureError):
            asyncio.run(breaker.call(fn))
    assert breaker.current_state() == "closed"
    asyncio.run(breaker.call(ok))  # 3 of 6 is the rate, but the last call succeeded: judged on failure
    assert breaker.current_state() == "closed"
    with pytest.raises(InfrastructureError):
        asyncio.run(breaker.call(fail))  # 3 failures in the last 6 (the first has left the window)
    assert breaker.current_state() == "open" and breaker.failures == 0
    with pytest.raises(CircuitOpen) as refused:
        breaker.before_call()
    assert refused.value.retry_after == pytest.approx(5.0) and refused.value.downstream == "payments"


async def test_calls_in_flight_when_it_opens_neither_close_it_nor_extend_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("payments", failure_threshold=2, open_for=5.0, clock=clock)
    late_ok, late_fail = asyncio.Event(), asyncio.Event()

    async def wait_then(event: asyncio.Event, fail: bool) -> None:
        await event.wait()
        if fail:
            raise InfrastructureError("down")

    slow = [
        asyncio.create_task(breaker.call(lambda: wait_then(late_ok, False))),
        asyncio.create_task(breaker.call(lambda: wait_then(late_fail, True))),
    ]
    await asyncio.sleep(0)  # both let through while closed

    async def fail() -> None:
        raise InfrastructureError("down")

    for _ in range(2):
        with pytest.raises(InfrastructureError):
            await breaker.call(fail)
    assert breaker.current_state() == "open"
    clock.advance(3)
    late_ok.set()
    late_fail.set()
    results = await asyncio.gather(*slow, return_exceptions=True)
    assert results[0] is None and isinstance(results[1], InfrastructureError)
    assert breaker.current_state() == "open"  # the late success did not close it
    clock.advance(2)  # and the late failure did not restart the interval
    assert breaker.current_state() == "half_open"
