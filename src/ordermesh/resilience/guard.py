"""The guard that applies a downstream's ``Policy`` (``resilience.policy``) around every call to it.

``Guard.call(attempt)`` does, outermost first:

1. the deadline: the call's own timeout, or less if the caller has less time left
   (``resilience.deadline``); each attempt gets what remains of it, and passes it on;
2. the bulkhead: at most ``bulkhead`` calls in flight, one more refused at once;
3. retries, for idempotent calls only, within that deadline and the downstream's retry budget;
4. the circuit breaker, around each attempt: open, an attempt fails at once with ``CircuitOpen``.

``Guard.call_blocking`` does the same for a blocking attempt, from any thread (the sync SDK
clients).

The clients every service shares (``client.rpc.GrpcClient``, ``client.shipping.ShippingClient``)
own one guard each, so handlers hold none of this. With ``enabled`` off (``ORDERMESH_BREAKERS=0``)
a guard keeps the deadline and the retries and drops the breaker and the bulkhead: the bare path the
benchmark compares against.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from ordermesh.clock import Clock
from ordermesh.resilience import deadline
from ordermesh.resilience.breaker import CircuitBreaker, State
from ordermesh.resilience.bulkhead import Bulkhead
from ordermesh.resilience.policy import DeadlineExceeded, Policy
from ordermesh.resilience.retry import RetryBudget, retry_after, retry_after_blocking, retryable

T = TypeVar("T")
Now = Callable[[], float]
log = logging.getLogger("ordermesh.resilience")


Attempt = Callable[[float], Awaitable[T]]  # given the seconds it may take
BlockingAttempt = Callable[[float], T]


class Guard:
    """The breaker, bulkhead, retry budget and counters of one downstream (see the module doc)."""

    def __init__(
        self,
        name: str,
        policy: Policy | None = None,
        clock: Clock | None = None,
        now: Now = time.monotonic,
        on_change: Callable[[str, State, State], None] | None = None,
    ) -> None:
        self.name = name
        self.policy = policy = policy or Policy()
        self._now = now
        self._on_change = on_change
        self.breaker = CircuitBreaker(
            name,
            policy.breaker_failures,
            policy.breaker_open_for,
            clock,
            listener=self._changed,
            failure_rate=policy.breaker_failure_rate,
            window=policy.breaker_window,
        )
        self.bulkhead = Bulkhead(name, policy.bulkhead)
        self.budget = RetryBudget(policy.retry_budget, now=now)
        self.calls = 0
        self.retries = 0
        self.transitions: dict[State, int] = {"closed": 0, "open": 0, "half_open": 0}
        # Only ``call_blocking`` takes it: its callers are threads, where the breaker's single
        # half-open probe and the bulkhead's count need it; ``call`` runs on one event loop.
        self._lock = threading.Lock()

    def _changed(self, name: str, old: State, new: State) -> None:
        self.transitions[new] += 1
        level = logging.INFO if new == "closed" else logging.WARNING
        log.log(level, "circuit %s: %s -> %s", name, old, new)  # once per change, by construction
        if self._on_change is not None:
            self._on_change(name, old, new)

    def _retried(self, _exc: BaseException, _wait: float) -> None:
        self.retries += 1

    async def call(
        self,
        attempt: Attempt[T],
        *,
        timeout: float | None = None,
        idempotent: bool = True,
        is_retryable: Callable[[BaseException], bool] = retryable,
    ) -> T:
        """``await attempt(seconds_left)`` under this downstream's policy (see the module doc).

        The first attempt is made here, inline — bulkhead, breaker and the call in one coroutine,
        as nearly every call succeeds at once (the bench measures this path); only a retryable
        failure goes on to ``retry.retry_after``."""
        self.calls += 1
        now = self._now
        policy = self.policy
        end = now() + deadline.budget(timeout or policy.timeout, now)
        retries = idempotent and policy.retry.attempts > 1
        if retries:
            self.budget.on_call()
        if not policy.enabled:
            once = self._bare(attempt, end)
            try:
                return await once()
            except Exception as exc:
                if not retries or not is_retryable(exc):
                    raise
                return await self._retry(exc, once, end, is_retryable)
        bulkhead, breaker = self.bulkhead, self.breaker
        bulkhead.enter()
        try:
            left = self._left(end)
            breaker.before_call()
            try:
                result = await attempt(left)
            except Exception as exc:
                breaker.on_failure(exc)
                if not retries or not is_retryable(exc):
                    raise
                return await self._retry(exc, self._guarded(attempt, end), end, is_retryable)
            except BaseException:
                breaker.on_cancelled()
                raise
            breaker.on_success()
            return result
        finally:
            bulkhead.leave()

    async def _retry(
        self,
        first: Exception,
        once: Callable[[], Awaitable[T]],
        end: float,
        is_retryable: Callable[[BaseException], bool],
    ) -> T:
        return await retry_after(
            first,
            once,
            self.policy.retry,
            deadline=end,
            budget=self.budget,
            is_retryable=is_retryable,
            on_retry=self._retried,
            now=self._now,
        )

    def _left(self, end: float) -> float:
        left = end - self._now()
        if left <= 0:
            raise DeadlineExceeded(f"{self.name}: the deadline passed before the call was made")
        return left

    def _bare(self, attempt: Attempt[T], end: float) -> Callable[[], Awaitable[T]]:
        async def once() -> T:
            return await attempt(self._left(end))

        return once

    def _guarded(self, attempt: Attempt[T], end: float) -> Callable[[], Awaitable[T]]:
        breaker = self.breaker

        async def once() -> T:
            left = self._left(end)
            breaker.before_call()
            try:
                result = await attempt(left)
            except Exception as exc:
                breaker.on_failure(exc)
                raise
            except BaseException:
                breaker.on_cancelled()
                raise
            breaker.on_success()
            return result

        return once

    def call_blocking(
        self,
        attempt: BlockingAttempt[T],
        *,
        timeout: float | None = None,
        idempotent: bool = True,
        is_retryable: Callable[[BaseException], bool] = retryable,
    ) -> T:
        """``call`` for a blocking ``attempt``, from any thread (the sync clients): the same
        deadline, bulkhead, retries and breaker; the thread waits out the backoff."""
        lock, policy, now = self._lock, self.policy, self._now
        with lock:
            self.calls += 1
        end = now() + deadline.budget(timeout or policy.timeout, now)
        retries = idempotent and policy.retry.attempts > 1
        if retries:
            self.budget.on_call()
        breaker, guarded = self.breaker, policy.enabled

        def locked(action: Callable[[], None]) -> None:
            with lock:
                action()

        def bare() -> T:
            return attempt(self._left(end))

        def through_breaker() -> T:
            left = self._left(end)
            locked(breaker.before_call)
            try:
                result = attempt(left)
            except Exception as exc:
                locked(partial(breaker.on_failure, exc))
                raise
            except BaseException:
                locked(breaker.on_cancelled)
                raise
            locked(breaker.on_success)
            return result

        once = through_breaker if guarded else bare
        if guarded:
            locked(self.bulkhead.enter)
        try:
            try:
                return once()
            except Exception as exc:
                if not retries or not is_retryable(exc):
                    raise
                return retry_after_blocking(
                    exc,
                    once,
                    policy.retry,
                    deadline=end,
                    budget=self.budget,
                    is_retryable=is_retryable,
                    on_retry=self._retried,
                    now=now,
                )
        finally:
            if guarded:
                locked(self.bulkhead.leave)

    def snapshot(self) -> dict[str, Any]:
        """What ``ordermesh breakers`` and ``/metrics`` show."""
        b, h = self.breaker, self.bulkhead
        return {
            "downstream": self.name,
            "state": b.current_state() if self.policy.enabled else "disabled",
            "consecutive_failures": b.failures,
            "failures": b.total_failures,
            "rejected": b.rejected,
            "opened": self.transitions["open"],
            "calls": self.calls,
            "retries": self.retries,
            "retry_budget_exhausted": self.budget.exhausted,
            "in_flight": h.in_flight,
            "bulkhead_limit": h.limit,
            "bulkhead_rejected": h.rejected,
            "open_for": b.open_for,
        }


class Guards:
    """The guards of one process, by downstream: one breaker per downstream however many clients
    call it; what ``/metrics`` and ``/admin/breakers`` report."""

    def __init__(self, clock: Clock | None = None, policy_for: Callable[[str], Policy] | None = None):
        self._clock = clock
        self._policy_for = policy_for or (lambda _name: Policy())
        self._guards: dict[str, Guard] = {}

    def get(self, name: str) -> Guard:
        guard = self._guards.get(name)
        if guard is None:
            guard = self._guards[name] = Guard(name, self._policy_for(name), self._clock)
        return guard

    def snapshot(self) -> list[dict[str, Any]]:
        return [guard.snapshot() for _, guard in sorted(self._guards.items())]

    def __iter__(self) -> Any:
        return iter(self._guards.values())


__all__ = ["Attempt", "BlockingAttempt", "Guard", "Guards"]
