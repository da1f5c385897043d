"""A circuit breaker per downstream: closed → open after ``failure_threshold`` consecutive
failures, or when at least ``failure_rate`` of the last ``window`` calls failed (judged once the
window is full) → half-open after ``open_for`` seconds, when one probe call is let through →
closed if it succeeds, open again if it fails.

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

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from ordermesh.clock import Clock, SystemClock
from ordermesh.errors import InfrastructureError

T = TypeVar("T")
State = Literal["closed", "open", "half_open"]
Listener = Callable[[str, State, State], None]  # (breaker name, old state, new state)


class CircuitOpen(InfrastructureError):
    """The downstream's breaker is open: the call was not made. ``retry_after``: seconds until it
    lets a probe through (a caller that parks work, like the saga, wakes then)."""

    def __init__(self, message: str, downstream: str = "", retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.downstream = downstream
        self.retry_after = retry_after


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
        failure_rate: float | None = None,
        window: int = 20,
    ) -> None:
        if failure_threshold < 1 or open_for <= 0:
            raise ValueError("a breaker needs a failure threshold of 1 or more and a positive open interval")
        if failure_rate is not None and not (0 < failure_rate <= 1 and window >= 2):
            raise ValueError("a failure rate is a share in (0, 1], over a window of 2 calls or more")
        self.name = name
        self.failure_threshold = failure_threshold
        self.open_for = open_for
        self._clock = clock or SystemClock()
        self._counts = counts
        self._listener = listener
        self.state: State = "closed"
        self.failures = 0  # consecutive, while closed
        self.failure_rate = failure_rate
        self.window = window
        self._recent: deque[bool] = deque(maxlen=window)  # while closed: True for a failure
        self.total_failures = 0  # every counted failure, for /metrics
        self.rejected = 0  # calls refused while open
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
            self.rejected += 1
            wait = max(self.open_for - (self._now() - self._opened_at), 0.0)
            # While a probe is out, its answer is due within a call's time: look again soon.
            retry_after = wait if state == "open" else min(1.0, self.open_for)
            raise CircuitOpen(
                f"{self.name} is unavailable (circuit open; next try in {wait:.1f} s)", self.name, retry_after
            )
        if state == "half_open":
            self._probing = True

    def on_success(self) -> None:
        if self.state == "open":  # a call let through before it opened: the interval stands
            return
        self._probing = False
        self.failures = 0
        if self.state == "closed":
            self._recent.append(False)
        else:
            self._recent.clear()
        self._move("closed")

    def on_failure(self, exc: BaseException) -> None:
        if not self._counts(exc):
            self.on_success()  # an answer, not an outage: the downstream is up
            return
        self._probing = False
        self.total_failures += 1
        if self.state == "open":  # a call let through before it opened: already counted as down
            return
        if self.state == "half_open":
            self._open()
            return
        self.failures += 1
        self._recent.append(True)
        if self.failures >= self.failure_threshold or self._rate_exceeded():
            self._open()

    def on_cancelled(self) -> None:
        """The call was cancelled: no answer either way; a probe's place is free again."""
        self._probing = False

    def _rate_exceeded(self) -> bool:
        if self.failure_rate is None or len(self._recent) < self.window:
            return False
        return sum(self._recent) >= self.failure_rate * self.window

    def _open(self) -> None:
        self._opened_at = self._now()
        self.failures = 0
        self._recent.clear()
        self._move("open")

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()`` through the breaker."""
        self.before_call()
        try:
            result = await fn()
        except Exception as exc:
            self.on_failure(exc)
            raise
        except BaseException:
            self.on_cancelled()
            raise
        self.on_success()
        return result


__all__ = ["CircuitBreaker", "CircuitOpen", "State", "is_infrastructure_failure"]
