"""Retries for idempotent calls: jittered exponential backoff, a cap on attempts, the caller's
deadline as the cap on total time, and a retry budget shared by every call to one downstream.

The first attempt runs bare: the retry machinery (``stamina``, on tenacity) is entered only once
an attempt has failed with a retryable error, so the calls that succeed — nearly all of them —
pay nothing for it. Retryable or not is decided by the error's type (:func:`retryable`), never by
the transport's codes: the clients turn those into ``ordermesh.errors`` classes first.

The budget (:class:`RetryBudget`, after gRPC's retry throttling and Finagle's RetryBudget) keeps
retries to a share of the calls (plus a few a second, so a quiet client can still retry): during an
outage every call fails, and without it each would be sent ``attempts`` times.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import stamina

from ordermesh.errors import IdempotencyKeyInUse, InfrastructureError
from ordermesh.resilience.breaker import CircuitOpen
from ordermesh.resilience.bulkhead import BulkheadFull

T = TypeVar("T")
Now = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def retryable(exc: BaseException) -> bool:
    """Whether trying the same idempotent call again may succeed: the downstream or the way to it
    failed (``InfrastructureError``, a timeout, a refused connection), or it was busy with the same
    key (``IdempotencyKeyInUse``). Not a refusal made here (an open circuit, a full bulkhead: those
    fail fast on purpose), and never an answer (declined, not found, invalid)."""
    if isinstance(exc, CircuitOpen | BulkheadFull):
        return False
    return isinstance(exc, InfrastructureError | IdempotencyKeyInUse | TimeoutError | ConnectionError)


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` in all (1: no retry); waits of ``wait_initial`` doubling up to ``wait_max``,
    each plus up to ``wait_jitter`` at random."""

    attempts: int = 3
    wait_initial: float = 0.05
    wait_max: float = 1.0
    wait_jitter: float = 0.05

    def __post_init__(self) -> None:
        if self.attempts < 1 or min(self.wait_initial, self.wait_max, self.wait_jitter) < 0:
            raise ValueError("a retry policy needs 1 attempt or more and waits of 0 s or more")

    def wait(self, retry: int, rng: random.Random | None = None) -> float:
        """The wait before retry number ``retry`` (1-based)."""
        jitter: float = (rng or random).uniform(0, self.wait_jitter) if self.wait_jitter else 0.0
        return float(min(self.wait_max, self.wait_initial * 2.0 ** (retry - 1) + jitter))


class RetryBudget:
    """Retries allowed: every call earns ``ratio`` of one, time earns ``per_second``; a retry spends
    one. Holds at most ``cap``. Time is ``now``'s (tests inject a clock)."""

    def __init__(
        self, ratio: float = 0.2, per_second: float = 10.0, cap: float = 100.0, now: Now = time.monotonic
    ):
        if ratio < 0 or per_second < 0 or cap < 1:
            raise ValueError("a retry budget needs a ratio and a rate of 0 or more, and a cap of 1 or more")
        self.ratio, self.per_second, self.cap = ratio, per_second, cap
        self._now = now
        self._tokens = cap
        self._at = now()
        self.exhausted = 0  # retries refused for want of budget

    def _refill(self) -> None:
        now = self._now()
        self._tokens = min(self.cap, self._tokens + (now - self._at) * self.per_second)
        self._at = now

    def on_call(self) -> None:
        self._tokens = min(self.cap, self._tokens + self.ratio)

    def try_spend(self) -> bool:
        # Unlocked: under threads (the sync clients) a race can grant a token too many or too
        # few. The budget bounds load; it is not an account, and the hot path stays lock-free.
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.exhausted += 1
        return False

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    deadline: float | None = None,
    budget: RetryBudget | None = None,
    is_retryable: Callable[[BaseException], bool] = retryable,
    on_retry: Callable[[BaseException, float], None] | None = None,
    now: Now = time.monotonic,
) -> T:
    """``await attempt()``, again after a retryable failure while attempts, the ``deadline`` (an
    instant on ``now``'s clock) and the ``budget`` allow; the last failure is raised as it was.
    A wait that would end past the deadline is not started: the error comes back at once."""
    if budget is not None:
        budget.on_call()
    try:
        return await attempt()
    except Exception as exc:
        if policy.attempts == 1 or not is_retryable(exc):
            raise
        first: Exception = exc
    return await retry_after(
        first,
        attempt,
        policy,
        deadline=deadline,
        budget=budget,
        is_retryable=is_retryable,
        on_retry=on_retry,
        now=now,
    )


def _when_to_retry(
    policy: RetryPolicy,
    deadline: float | None,
    budget: RetryBudget | None,
    is_retryable: Callable[[BaseException], bool],
    on_retry: Callable[[BaseException, float], None] | None,
    now: Now,
) -> Callable[[Exception], bool | float]:
    """stamina's ``on`` hook: False to give up with this failure, else the wait before the retry."""
    retries = 0

    def again(exc: Exception) -> bool | float:
        nonlocal retries
        # Checked here, before the budget is touched: stamina asks this hook before its own stop.
        if not is_retryable(exc) or retries + 1 >= policy.attempts:
            return False
        wait = policy.wait(retries + 1)
        if deadline is not None and now() + wait >= deadline:
            return False
        if budget is not None and not budget.try_spend():
            return False
        retries += 1
        if on_retry is not None:
            on_retry(exc, wait)
        return wait

    return again


async def retry_after(
    first: Exception,
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    deadline: float | None = None,
    budget: RetryBudget | None = None,
    is_retryable: Callable[[BaseException], bool] = retryable,
    on_retry: Callable[[BaseException, float], None] | None = None,
    now: Now = time.monotonic,
) -> T:
    """The retries of :func:`call_with_retries`, once its first attempt failed with ``first``
    (a caller that made the first attempt itself, like ``policy.Guard``, enters here)."""
    again = _when_to_retry(policy, deadline, budget, is_retryable, on_retry, now)
    # stamina waits between attempts; the first failure happened outside it, so its wait is
    # decided here and stamina's loop is entered after it.
    pause = again(first)
    if pause is False:
        raise first
    await _sleep(float(pause))
    async for trying in stamina.retry_context(
        on=again, attempts=policy.attempts - 1, timeout=None, wait_jitter=0.0
    ):
        with trying:
            return await attempt()
    raise AssertionError("unreachable: stamina raises the last failure")  # pragma: no cover


def retry_after_blocking(
    first: Exception,
    attempt: Callable[[], T],
    policy: RetryPolicy,
    *,
    deadline: float | None = None,
    budget: RetryBudget | None = None,
    is_retryable: Callable[[BaseException], bool] = retryable,
    on_retry: Callable[[BaseException, float], None] | None = None,
    now: Now = time.monotonic,
) -> T:
    """:func:`retry_after` for a blocking ``attempt`` (the sync clients): the thread waits."""
    again = _when_to_retry(policy, deadline, budget, is_retryable, on_retry, now)
    pause = again(first)
    if pause is False:
        raise first
    if not stamina.is_testing():
        time.sleep(float(pause))
    for trying in stamina.retry_context(
        on=again, attempts=policy.attempts - 1, timeout=None, wait_jitter=0.0
    ):
        with trying:
            return attempt()
    raise AssertionError("unreachable: stamina raises the last failure")  # pragma: no cover


async def _sleep(seconds: float) -> None:
    if stamina.is_testing():  # stamina's test mode: no waiting, ours included
        return
    await asyncio.sleep(seconds)


__all__ = [
    "RetryBudget",
    "RetryPolicy",
    "call_with_retries",
    "retry_after",
    "retry_after_blocking",
    "retryable",
]
