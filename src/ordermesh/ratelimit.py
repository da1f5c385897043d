"""Per-caller limits, free of transports: a token bucket per key for rates, a counter per key
for things held open. Both raise :class:`ordermesh.errors.RateLimited`, which REST answers with
429 and ``Retry-After``, gRPC with RESOURCE_EXHAUSTED and a ``RetryInfo``.

    writes = RateLimiter(rate=20, burst=40, clock=clock)
    writes.acquire(user)                    # RateLimited once the user's bucket is empty

    streams = ConcurrencyLimit(16, "open order update streams")
    with streams.hold(user):                # RateLimited while the user holds 16 already
        ...
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ordermesh.clock import Clock, SystemClock
from ordermesh.errors import RateLimited

# Buckets kept at most; past it, full ones (callers idle long enough to have refilled) go first.
MAX_KEYS = 100_000
_EPSILON = 1e-9
# ORDERMESH_WRITE_RATE's and ORDERMESH_WRITE_BURST's defaults, for limiters built without settings.
WRITE_RATE = 20.0
WRITE_BURST = 40


class RateLimiter:
    """``rate`` actions a second per key on average, ``burst`` at once (``rate`` 0: no limit).

    Each key has a bucket of up to ``burst`` tokens that refills at ``rate`` a second; an action
    takes one. Time comes from ``clock``, so tests move it instead of sleeping."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Clock | None = None,
        what: str = "requests",
        max_keys: int = MAX_KEYS,
    ) -> None:
        if rate < 0 or burst < 1:
            raise ValueError(f"rate must be 0 or more and burst 1 or more, not {rate} and {burst}")
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock or SystemClock()
        self._epoch = self._clock.now()
        self._what = what
        self._max_keys = max_keys
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, when they were counted]

    def acquire(self, key: str) -> None:
        """Take one token of ``key``'s bucket; ``RateLimited`` (saying when to retry) if empty."""
        if not self.rate:
            return
        # Seconds since this limiter began: exact to the microsecond, where an epoch timestamp's
        # float is not (0.05 s at 20/s must give back a whole token).
        now = (self._clock.now() - self._epoch).total_seconds()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._prune(now)
            self._buckets[key] = [self.burst - 1, now]
            return
        # max(0, …): a wall clock set back must not drain anyone's bucket.
        tokens = min(self.burst, bucket[0] + max(0.0, now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1 - _EPSILON:  # float sums: 0.05 s at 20/s may come to 0.999… tokens
            bucket[0] = max(0.0, tokens - 1)
            return
        bucket[0] = tokens
        wait = (1 - tokens) / self.rate
        raise RateLimited(
            f"too many {self._what}: at most {self.rate:g} a second ({self.burst:g} at once); "
            f"retry in {wait:.2f} s",
            retry_after=wait,
        )

    def _prune(self, now: float) -> None:
        full = [
            k for k, (tokens, at) in self._buckets.items() if tokens + (now - at) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self._max_keys:  # everyone is busy: forget the oldest half
            for key in list(self._buckets)[: len(self._buckets) // 2]:
                del self._buckets[key]


class ConcurrencyLimit:
    """At most ``limit`` things (streams, say) held open per key at once."""

    def __init__(self, limit: int, what: str) -> None:
        if limit < 1:
            raise ValueError(f"limit must be 1 or more, not {limit}")
        self.limit = limit
        self._what = what
        self._held: dict[str, int] = {}

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """One of ``key``'s places for the block; ``RateLimited`` when all are taken."""
        count = self._held.get(key, 0)
        if count >= self.limit:
            raise RateLimited(f"too many {self._what}: at most {self.limit} at once; close one first")
        self._held[key] = count + 1
        try:
            yield
        finally:
            left = self._held[key] - 1
            if left:
                self._held[key] = left
            else:
                del self._held[key]  # no entry per caller that ever came


__all__ = ["MAX_KEYS", "WRITE_BURST", "WRITE_RATE", "ConcurrencyLimit", "RateLimiter"]
