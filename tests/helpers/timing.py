"""The suite's one timeout policy, and the one poller built on it.

Every wait a test makes has a ceiling: a default (``TIMEOUT`` for something this process does,
``PROCESS_TIMEOUT`` for another process to start or to act), or a figure the test names. Every
ceiling goes through ``scaled``: ``ORDERMESH_TEST_TIMEOUT_SCALE=3`` gives a slow machine three
times as long, and a passing test takes no longer for it, since a wait ends when its condition
holds. A bound a test *proves* ("a read answers in under a second while a downstream hangs for
three") is no ceiling and is never scaled: ``promptly`` checks one, by the loop's clock.

- ``eventually(condition)``: poll a condition (a function, or a coroutine function) until it
  gives a truthy value, and return that value. Only for state with no notification to wait on
  (a counter, a dead-letter queue, another process's endpoint); an event or a future is awaited
  with ``within`` instead.
- ``eventually_sync``: the same for tests that drive other processes from a plain function.
- ``within(awaitable)``: ``asyncio.wait_for`` with the policy's ceiling and a failure that says
  what was waited for.

A condition that raises ``AssertionError`` is "not yet", and its last assertion is the failure
at the ceiling: ``eventually(lambda: check(order))`` may assert inside ``check``.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


def _scale() -> float:
    raw = os.environ.get("ORDERMESH_TEST_TIMEOUT_SCALE", "").strip()
    if not raw:
        return 1.0
    try:
        scale = float(raw)
    except ValueError:
        raise ValueError(f"ORDERMESH_TEST_TIMEOUT_SCALE={raw!r} is not a number") from None
    if scale <= 0:
        raise ValueError(f"ORDERMESH_TEST_TIMEOUT_SCALE={raw!r} must be above 0")
    return scale


SCALE = _scale()
TIMEOUT = 10.0  # seconds: something this process does (a delivery, a counter, a task)
PROCESS_TIMEOUT = 60.0  # seconds: another process starts, or a saga runs across processes
POLL = 0.01  # seconds between two looks at state of this process
PROCESS_POLL = 0.05  # seconds between two requests to another process


def scaled(seconds: float) -> float:
    """A ceiling of ``seconds``, as long as this machine needs (ORDERMESH_TEST_TIMEOUT_SCALE)."""
    return seconds * SCALE


def _describe(condition: object, what: str) -> str:
    return what or getattr(condition, "__qualname__", None) or repr(condition)


def _timed_out(description: str, ceiling: float, last: object, error: BaseException | None) -> AssertionError:
    if error is not None:
        return AssertionError(f"not so within {ceiling:.1f} s: {description}: {error}")
    return AssertionError(f"not so within {ceiling:.1f} s: {description} (last: {last!r})")


@overload
async def eventually(
    condition: Callable[[], Awaitable[T | None]],
    timeout: float = ...,
    *,
    what: str = ...,
    interval: float = ...,
    ignoring: tuple[type[BaseException], ...] = ...,
) -> T: ...


@overload
async def eventually(
    condition: Callable[[], T | None],
    timeout: float = ...,
    *,
    what: str = ...,
    interval: float = ...,
    ignoring: tuple[type[BaseException], ...] = ...,
) -> T: ...


async def eventually(
    condition: Callable[[], Any],
    timeout: float = TIMEOUT,
    *,
    what: str = "",
    interval: float = POLL,
    ignoring: tuple[type[BaseException], ...] = (),
) -> Any:
    """The first truthy value ``condition()`` gives (awaited if it is a coroutine), looked at every
    ``interval`` seconds; an ``AssertionError`` naming ``what`` and the last value if none comes
    within the scaled ``timeout``. Exceptions in ``ignoring`` count as "not yet"."""
    loop = asyncio.get_running_loop()
    ceiling = scaled(timeout)
    deadline = loop.time() + ceiling
    not_yet: tuple[type[BaseException], ...] = (AssertionError, *ignoring)
    while True:
        value: Any = None
        error: BaseException | None = None
        try:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
        except not_yet as exc:
            error = exc
        else:
            if value:
                return value
        if loop.time() >= deadline:
            raise _timed_out(_describe(condition, what), ceiling, value, error) from error
        await asyncio.sleep(interval)  # polled state: nothing announces the change


def eventually_sync(
    condition: Callable[[], T | None],
    timeout: float = PROCESS_TIMEOUT,
    *,
    what: str = "",
    interval: float = PROCESS_POLL,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """``eventually`` for a test that drives other processes from a plain function: another
    process's state can only be polled."""
    ceiling = scaled(timeout)
    deadline = time.monotonic() + ceiling
    not_yet: tuple[type[BaseException], ...] = (AssertionError, *ignoring)
    while True:
        value: T | None = None
        error: BaseException | None = None
        try:
            value = condition()
        except not_yet as exc:
            error = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            raise _timed_out(_describe(condition, what), ceiling, value, error) from error
        time.sleep(interval)  # another process's state: nothing to wait on but polling


async def within(awaitable: Awaitable[T], timeout: float = TIMEOUT, *, what: str = "") -> T:
    """``awaitable``'s result, or an ``AssertionError`` naming ``what`` if it takes longer than
    the scaled ``timeout`` (it is cancelled then)."""
    ceiling = scaled(timeout)
    try:
        return await asyncio.wait_for(awaitable, ceiling)
    except TimeoutError:
        raise AssertionError(f"not done within {ceiling:.1f} s: {what or awaitable!r}") from None


async def promptly(awaitable: Awaitable[T], bound: float, *, what: str = "") -> T:
    """``awaitable``'s result, failing if it took ``bound`` seconds or more by the loop's clock.
    The bound is what the test proves (an answer that did not wait for something slower), so it
    is not scaled."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await awaitable
    took = loop.time() - started
    assert took < bound, f"{what or 'the call'} took {took:.2f} s, not under {bound} s"
    return result


class Ticks:
    """A monotonic clock (``now`` for the resilience pieces) that moves only when ``t`` is moved."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


__all__ = [
    "POLL",
    "PROCESS_POLL",
    "PROCESS_TIMEOUT",
    "SCALE",
    "TIMEOUT",
    "Ticks",
    "eventually",
    "eventually_sync",
    "promptly",
    "scaled",
    "within",
]
