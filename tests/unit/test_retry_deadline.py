"""Retries (only what may be retried, within attempts, deadline and budget), the propagated
deadline, and the guard that combines them with the breaker and the bulkhead — on injected
clocks, with stamina's test mode for the waits."""

from __future__ import annotations

import asyncio

import pytest

from ordermesh.clock import FakeClock
from ordermesh.errors import DomainError, IdempotencyKeyInUse, InfrastructureError, NotFound, ValidationError
from ordermesh.resilience import (
    BulkheadFull,
    CircuitOpen,
    DeadlineExceeded,
    Guard,
    Policy,
    RetryBudget,
    RetryPolicy,
    call_with_retries,
    deadline,
    retryable,
)
from tests.helpers import Ticks

pytestmark = pytest.mark.usefixtures("no_retry_waits")


class Flaky:
    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def test_what_is_retried_is_decided_by_the_error_type() -> None:
    assert (
        retryable(InfrastructureError("down")) and retryable(TimeoutError()) and retryable(ConnectionError())
    )
    assert retryable(IdempotencyKeyInUse("busy"))
    for answer in (DomainError("declined"), NotFound("no"), ValidationError("bad")):
        assert not retryable(answer)
    # Refusals made here fail fast on purpose: retrying them would only wait in a loop.
    assert not retryable(CircuitOpen("open")) and not retryable(BulkheadFull("full"))


async def test_retries_until_success_within_the_attempts() -> None:
    flaky = Flaky(InfrastructureError("a"), InfrastructureError("b"))
    assert await call_with_retries(flaky, RetryPolicy(attempts=3)) == "ok"
    assert flaky.calls == 3
    flaky = Flaky(*(InfrastructureError(str(i)) for i in range(5)))
    with pytest.raises(InfrastructureError, match="2"):  # the last failure, as it was
        await call_with_retries(flaky, RetryPolicy(attempts=3))
    assert flaky.calls == 3


async def test_an_answer_is_never_retried() -> None:
    flaky = Flaky(DomainError("declined"))
    with pytest.raises(DomainError):
        await call_with_retries(flaky, RetryPolicy(attempts=5))
    assert flaky.calls == 1
    flaky = Flaky(InfrastructureError("down"), NotFound("gone"))
    with pytest.raises(NotFound):
        await call_with_retries(flaky, RetryPolicy(attempts=5))
    assert flaky.calls == 2


async def test_no_wait_is_started_that_would_end_past_the_deadline() -> None:
    now = Ticks()
    flaky = Flaky(InfrastructureError("down"), InfrastructureError("down"))
    policy = RetryPolicy(attempts=5, wait_initial=0.5, wait_jitter=0.0)
    with pytest.raises(InfrastructureError):
        await call_with_retries(flaky, policy, deadline=now.t + 0.4, now=now)
    assert flaky.calls == 1  # the first wait alone (0.5 s) would pass the deadline
    flaky = Flaky(InfrastructureError("down"))
    assert await call_with_retries(flaky, policy, deadline=now.t + 0.6, now=now) == "ok"


def test_backoff_doubles_up_to_its_cap_with_bounded_jitter() -> None:
    policy = RetryPolicy(attempts=10, wait_initial=0.1, wait_max=1.0, wait_jitter=0.0)
    assert [policy.wait(n) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    jittered = RetryPolicy(wait_initial=0.1, wait_max=5, wait_jitter=0.05)
    assert all(0.1 <= jittered.wait(1) <= 0.15 for _ in range(50))


async def test_the_budget_keeps_retries_to_a_share_of_the_calls() -> None:
    now = Ticks()
    budget = RetryBudget(ratio=0.25, per_second=0.0, cap=2.0, now=now)
    outage = [Flaky(*(InfrastructureError("down") for _ in range(3))) for _ in range(20)]
    for flaky in outage:
        with pytest.raises(InfrastructureError):
            await call_with_retries(flaky, RetryPolicy(attempts=3), budget=budget, now=now)
    sent = sum(f.calls for f in outage)
    # The first call spent the 2 retries the budget started with; the 19 others earned a quarter
    # each, a retry every 4th call: 26 sends in all, not 60.
    assert sent == 26 and budget.exhausted == 19
    now.t += 1.0  # time alone earns nothing at a rate of 0
    assert budget.tokens < 1
    refilling = RetryBudget(ratio=0.0, per_second=10.0, cap=5.0, now=now)
    for _ in range(5):
        assert refilling.try_spend()
    assert not refilling.try_spend()
    now.t += 0.1
    assert refilling.try_spend()  # 10 a second: one more after 0.1 s


def test_the_deadline_narrows_and_never_widens() -> None:
    now = Ticks()
    assert deadline.remaining(now) is None and deadline.budget(5.0, now) == 5.0
    with deadline.within(2.0, now) as outer:
        assert outer == now.t + 2.0 and deadline.budget(5.0, now) == 2.0
        with deadline.within(10.0, now):  # a callee cannot give itself more than its caller has
            assert deadline.remaining(now) == 2.0
        with deadline.within(0.5, now):
            assert deadline.remaining(now) == 0.5
        now.t += 3.0
        assert deadline.remaining(now) == 0.0
    assert deadline.current() is None


def test_the_header_carries_whole_milliseconds() -> None:
    assert deadline.to_header(1.2345) == "1234" and deadline.to_header(0.0) == "1"
    assert deadline.from_header(" 250 ") == 0.25
    for bad in ("-1", "1.5", "soon", "", "9" * 13):
        with pytest.raises(ValidationError, match="X-Ordermesh-Deadline-Ms"):
            deadline.from_header(bad)


async def test_the_guard_opens_fails_fast_and_spends_no_retries_on_an_open_breaker() -> None:
    clock, now = FakeClock(), Ticks()
    policy = Policy(timeout=1.0, retry=RetryPolicy(attempts=3), breaker_failures=3, breaker_open_for=5.0)
    guard = Guard("payments", policy, clock, now)
    flaky = Flaky(*(InfrastructureError("down") for _ in range(100)))

    async def attempt(_left: float) -> str:
        return await flaky()

    with pytest.raises(InfrastructureError) as first:
        await guard.call(attempt)
    assert not isinstance(first.value, CircuitOpen) and flaky.calls == 3  # 3 attempts, 3 failures
    with pytest.raises(CircuitOpen):
        await guard.call(attempt)
    assert flaky.calls == 3  # open: nothing reached the downstream, and no retry was spent on it
    snap = guard.snapshot()
    assert (snap["state"], snap["failures"], snap["opened"], snap["rejected"]) == ("open", 3, 1, 1)
    clock.advance(5.0)
    flaky.failures.clear()
    assert await guard.call(attempt) == "ok"  # the probe
    assert guard.snapshot()["state"] == "closed"


async def test_the_guard_passes_on_what_is_left_of_the_callers_deadline() -> None:
    now = Ticks()
    guard = Guard("shipping", Policy(timeout=5.0), FakeClock(), now)
    seen: list[float] = []

    async def attempt(left: float) -> str:
        seen.append(left)
        return "ok"

    with deadline.within(0.75, now):
        await guard.call(attempt)
    await guard.call(attempt, timeout=2.0)
    assert seen == [0.75, 2.0]
    with deadline.within(1.0, now):
        now.t += 1.0
        with pytest.raises(DeadlineExceeded):
            await guard.call(attempt)
    assert len(seen) == 2  # no time left: the call was not made


async def test_a_non_idempotent_call_is_tried_once() -> None:
    guard = Guard("orders", Policy(retry=RetryPolicy(attempts=5)), FakeClock())
    flaky = Flaky(InfrastructureError("down"))

    async def attempt(_left: float) -> str:
        return await flaky()

    with pytest.raises(InfrastructureError):
        await guard.call(attempt, idempotent=False)
    assert flaky.calls == 1


async def test_the_guard_bulkhead_refuses_at_once_and_breakers_off_is_a_bare_call() -> None:
    guard = Guard("inventory", Policy(bulkhead=1), FakeClock())
    gate = asyncio.Event()

    async def slow(_left: float) -> str:
        await gate.wait()
        return "ok"

    first = asyncio.create_task(guard.call(slow))
    await asyncio.sleep(0)
    with pytest.raises(BulkheadFull):
        await guard.call(slow)
    gate.set()
    assert await first == "ok"
    bare = Guard("inventory", Policy(bulkhead=1, enabled=False), FakeClock())
    gate.clear()
    calls = [asyncio.create_task(bare.call(slow)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*calls) == ["ok"] * 3
    assert bare.snapshot()["state"] == "disabled"
