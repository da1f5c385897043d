"""The caller's deadline, carried through a request and passed on to every call it makes.

A deadline is an instant on the monotonic clock (``time.monotonic()``; tests pass their own
``now``). The server edges set it from what the caller sent: gRPC from the call's own deadline
(``rpc.interceptors``), REST from the ``X-Ordermesh-Deadline-Ms`` header, the caller's remaining
time in milliseconds (relative, so the two hosts' clocks need not agree). Every outbound call
then takes the smaller of its own timeout and what is left (:func:`budget`), and sends that on:
a downstream never works past its caller's patience.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

from ordermesh.errors import FieldViolation, ValidationError

#: The REST header that carries the caller's remaining time, in whole milliseconds.
DEADLINE_HEADER = "X-Ordermesh-Deadline-Ms"
Now = Callable[[], float]

_deadline: ContextVar[float | None] = ContextVar("ordermesh_deadline", default=None)


def current() -> float | None:
    """The deadline of what is running now (an instant on the monotonic clock), None for none."""
    return _deadline.get()


def remaining(now: Now = time.monotonic) -> float | None:
    """Seconds left before the current deadline (0 when it passed), None when there is none."""
    deadline = _deadline.get()
    return None if deadline is None else max(deadline - now(), 0.0)


def budget(timeout: float, now: Now = time.monotonic) -> float:
    """What a call may take: its own ``timeout``, or less if the caller has less time left."""
    left = remaining(now)
    return timeout if left is None else min(timeout, left)


def set_deadline(deadline: float | None) -> Token[float | None]:
    """Make ``deadline`` (monotonic instant, or None) the current one; the edges call this."""
    return _deadline.set(deadline)


def reset(token: Token[float | None]) -> None:
    _deadline.reset(token)


@contextmanager
def within(seconds: float | None, now: Now = time.monotonic) -> Iterator[float | None]:
    """Run the block under a deadline ``seconds`` from now, or the caller's if that comes first
    (a callee never extends its caller's deadline). Yields the deadline in force."""
    outer = _deadline.get()
    inner = None if seconds is None else now() + max(seconds, 0.0)
    chosen = inner if outer is None else outer if inner is None else min(inner, outer)
    token = _deadline.set(chosen)
    try:
        yield chosen
    finally:
        _deadline.reset(token)


def to_header(seconds: float) -> str:
    """The header value for ``seconds`` left (at least 1 ms: 0 would read as "no time at all")."""
    return str(max(int(seconds * 1000), 1))


def from_header(value: str) -> float:
    """Seconds from a header value; ``ValidationError`` (a 4xx at the edge) if it is not a
    whole number of milliseconds."""
    text = value.strip()
    if not text.isdigit() or len(text) > 12:
        raise ValidationError(
            f"{DEADLINE_HEADER} must be a whole number of milliseconds, got {value[:40]!r}",
            [FieldViolation(DEADLINE_HEADER, "not a whole number of milliseconds")],
        )
    return int(text) / 1000


__all__ = [
    "DEADLINE_HEADER",
    "budget",
    "current",
    "from_header",
    "remaining",
    "reset",
    "set_deadline",
    "to_header",
    "within",
]
