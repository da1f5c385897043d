"""``Guard.call_blocking``, what the sync SDK clients call through: the same deadline, retries,
breaker and bulkhead as ``Guard.call``, safe from many threads at once (one half-open probe, an
exact bulkhead count). Injected clocks; stamina's test mode for the waits."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from ordermesh.clock import FakeClock
from ordermesh.errors import InfrastructureError, NotFound
from ordermesh.resilience import (
    BulkheadFull,
    CircuitOpen,
    DeadlineExceeded,
    Guard,
    Policy,
    RetryPolicy,
    deadline,
)
from tests.helpers import Ticks

pytestmark = pytest.mark.usefixtures("no_retry_waits")


def failing(times: int, exc: Exception) -> tuple[list[float], Callable[[float], str]]:
    seen: list[float] = []

    def attempt(left: float) -> str:
        seen.append(left)
        if len(seen) <= times:
            raise exc
        return "ok"

    return seen, attempt


def test_it_retries_what_may_be_retried_and_opens_then_fails_fast_then_probes() -> None:
    clock = FakeClock()
    policy = Policy(timeout=1.0, retry=RetryPolicy(attempts=3), breaker_failures=3, breaker_open_for=5.0)
    guard = Guard("orders", policy, clock, Ticks())
    seen, attempt = failing(1, InfrastructureError("down"))
    assert guard.call_blocking(attempt) == "ok" and len(seen) == 2  # retried once
    assert guard.snapshot()["retries"] == 1

    seen, attempt = failing(100, InfrastructureError("down"))
    with pytest.raises(InfrastructureError) as first:
        guard.call_blocking(attempt)
    assert not isinstance(first.value, CircuitOpen) and len(seen) == 3
    with pytest.raises(CircuitOpen):
        guard.call_blocking(attempt)
    assert len(seen) == 3  # open: not called, no retry spent
    clock.advance(5.0)
    seen, attempt = failing(0, InfrastructureError("down"))
    assert guard.call_blocking(attempt) == "ok"
    assert guard.snapshot()["state"] == "closed"


def test_an_answer_or_a_non_idempotent_call_is_tried_once() -> None:
    guard = Guard("orders", Policy(retry=RetryPolicy(attempts=5)), FakeClock())
    seen, attempt = failing(1, NotFound("no such order"))
    with pytest.raises(NotFound):
        guard.call_blocking(attempt)
    seen2, attempt2 = failing(1, InfrastructureError("down"))
    with pytest.raises(InfrastructureError):
        guard.call_blocking(attempt2, idempotent=False)
    assert (len(seen), len(seen2)) == (1, 1)
    assert guard.snapshot()["state"] == "closed"  # an answer is not an outage


def test_it_passes_on_what_is_left_of_the_deadline_and_makes_no_call_past_it() -> None:
    now = Ticks()
    guard = Guard("orders", Policy(timeout=5.0), FakeClock(), now)
    seen, attempt = failing(0, InfrastructureError("down"))
    with deadline.within(0.5, now):
        guard.call_blocking(attempt)
    guard.call_blocking(attempt, timeout=2.0)
    with deadline.within(1.0, now):
        now.t += 1.0
        with pytest.raises(DeadlineExceeded):
            guard.call_blocking(attempt)
    assert seen == [0.5, 2.0]


def test_across_threads_the_bulkhead_counts_exactly() -> None:
    guard = Guard("orders", Policy(bulkhead=2), FakeClock())
    inside, gate = threading.Barrier(3), threading.Event()

    def slow(_left: float) -> str:
        inside.wait(5)
        gate.wait(5)
        return "ok"

    with ThreadPoolExecutor(2) as pool:
        calls = [pool.submit(guard.call_blocking, slow) for _ in range(2)]
        inside.wait(5)  # both in flight
        with pytest.raises(BulkheadFull):
            guard.call_blocking(slow)
        gate.set()
        assert [c.result(5) for c in calls] == ["ok", "ok"]
    snap = guard.snapshot()
    assert (snap["in_flight"], snap["bulkhead_rejected"]) == (0, 1)


def test_across_threads_half_open_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    guard = Guard("orders", Policy(breaker_failures=1, breaker_open_for=1.0), clock)
    _, down = failing(1, InfrastructureError("down"))
    with pytest.raises(InfrastructureError):
        guard.call_blocking(down, idempotent=False)
    clock.advance(1.0)  # half-open: one probe may go
    probing, release = threading.Event(), threading.Event()
    made = 0

    def probe(_left: float) -> str:
        nonlocal made
        made += 1
        probing.set()
        release.wait(5)
        return "ok"

    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(guard.call_blocking, probe)
        assert probing.wait(5)
        others = [pool.submit(guard.call_blocking, probe) for _ in range(6)]
        refusals = [f.exception(5) for f in others]
        release.set()
        assert first.result(5) == "ok"
    assert all(isinstance(e, CircuitOpen) for e in refusals) and made == 1
    assert guard.snapshot()["state"] == "closed"
