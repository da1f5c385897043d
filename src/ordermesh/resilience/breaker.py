"""A circuit breaker per downstream: closed → open after ``failure_threshold`` consecutive
failures → half-open after ``open_for`` seconds, when one probe call is let through → closed if it
succeeds, open again if it fails.

Only infrastructure failures count (``InfrastructureError``, timeouts, refused connections): a
declined payment is an answer, not a failure, so it opens nothing — and, answering a probe, it
shows the downstream is up, so it closes the breaker. A cancelled call proves nothing either way:
it frees the probe's place and changes nothing else. While open, a call
fails at once with ``CircuitOpen`` (an ``InfrastructureError``: 503 / UNAVAILABLE at the edges),
so nothing piles up behind a downstream that is down. Time is the injected clock's.

Written here: no maintained asyncio-native breaker exists (pybreaker's asyncio support goes
through Tornado; purgatory's model was read for its semantics).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from ordermesh.clock import Clock, SystemClock
from ordermesh.errors import InfrastructureError

T = TypeVar("T")
State = Literal["closed", "open", "half_open"]
Listener = Callable[[str, State, State], None]  # (breaker name, old state, new state)


class CircuitOpen(InfrastructureError):
    """The downstream's breaker is open: the call was not made."""


def is_infrastructure_failure(exc: BaseException) -> bool:
    return isinstance(exc, InfrastructureError | TimeoutError | ConnectionError)


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        open_for: float = 10.0,
        clock: Clock | None = None,
        counts: Callable[[BaseException], bool] = is_infrastructure_failure,
        listener: Listener | None = None,
    ) -> None:
        if failure_threshold < 1 or open_for <= 0:
            raise ValueError("a breaker needs a failure threshold of 1 or more and a positive open interval")
        self.name = name
        self.failure_threshold = failure_threshold
        self.open_for = open_for
        self._clock = clock or SystemClock()
        self._counts = counts
        self._listener = listener
        self.state: State = "closed"
        self.failures = 0  # consecutive, while closed
        self._opened_at = 0.0
        self._probing = False

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def _move(self, state: State) -> None:
        old, self.state = self.state, state
        if old != state and self._listener is not None:
            self._listener(self.name, old, state)

    def current_state(self) -> State:
        """The state as of now: an open breaker whose interval has passed is half-open."""
        if self.state == "open" and self._now() - self._opened_at >= self.open_for:
            self._move("half_open")
        return self.state

    def before_call(self) -> None:
        """Let a call through, or raise ``CircuitOpen``; a half-open breaker lets one probe."""
        state = self.current_state()
        if state == "open" or (state == "half_open" and self._probing):
            wait = max(self.open_for - (self._now() - self._opened_at), 0.0)
            raise CircuitOpen(f"{self.name} is unavailable (circuit open; next try in {wait:.1f} s)")
        if state == "half_open":
            self._probing = True

    def on_success(self) -> None:
        self._probing = False
        self.failures = 0
        self._move("closed")

    def on_failure(self, exc: BaseException) -> None:
        if not self._counts(exc):
            self.on_success()  # an answer, not an outage: the downstream is up
            return
        self._probing = False
        if self.state == "half_open":
            self._open()
            return
        self.failures += 1
        if self.failures >= self.failure_threshold:
            self._open()

    def _open(self) -> None:
        self._opened_at = self._now()
        self.failures = 0
        self._move("open")

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()`` through the breaker."""
        self.before_call()
        try:
            result = await fn()
        except Exception as exc:
            self.on_failure(exc)
            raise
        except BaseException:  # cancelled: no answer either way
            self._probing = False
            raise
        self.on_success()
        return result


__all__ = ["CircuitBreaker", "CircuitOpen", "State", "is_infrastructure_failure"]
