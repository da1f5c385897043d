"""Where a broker's exchanges and queues live on the server: every name behind one prefix.

``RabbitBroker`` declares the topology and ``RabbitSubscription`` routes retries and dead
letters into it; both read the names here, so neither asks the other for them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ordermesh.messaging.port import RetryPolicy


@dataclass(frozen=True, slots=True)
class Names:
    """The names of one broker object's topology (``prefix``: a namespace for tests, tenants)."""

    prefix: str = ""

    def full(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def unprefixed(self, name: str) -> str:
        return name[len(self.prefix) :] if self.prefix and name.startswith(self.prefix) else name

    def dlq(self, queue: str) -> str:
        return self.full(f"{queue}.dlq")

    def delay_queue(self, queue: str, delay_ms: int) -> str:
        return self.full(f"{queue}.retry.{delay_ms}")

    @staticmethod
    def delay_ms(retry: RetryPolicy, attempt: int) -> int:
        """The delay queue a failed ``attempt`` waits in (at least 1 ms: a TTL of 0 is none)."""
        return max(1, round(retry.delay(attempt) * 1000))


__all__ = ["Names"]
