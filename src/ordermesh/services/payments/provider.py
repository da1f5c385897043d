"""The payment provider port, and the simulated provider the service runs with.

A provider charges and refunds under the payment id, which a real one uses as its idempotency
key: the service may send the same charge again after a crash and be charged once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from ordermesh.config import Settings
from ordermesh.errors import InfrastructureError

Sleeper = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ProviderDecision:
    approved: bool
    reason: str = ""  # why not, when declined


class ProviderError(InfrastructureError):
    """The provider failed or could not be reached: nothing was charged or refunded."""


class PaymentProvider(Protocol):
    async def charge(self, payment_id: str, amount: int, currency: str) -> ProviderDecision:
        """Approve (and take) or decline the charge; ``ProviderError`` if it cannot tell."""
        ...

    async def refund(self, payment_id: str, amount: int, currency: str) -> None:
        """Give back ``amount`` of the payment (0 or a payment never charged: nothing to do);
        ``ProviderError`` if it failed."""
        ...


class SimulatedProvider:
    """Declines charges above ``limit``; every call takes ``latency`` seconds (through ``sleep``,
    so tests need not wait) and fails with ``ProviderError`` at the rate ``error_rate`` (drawn
    from ``rng``, seeded in tests)."""

    def __init__(
        self,
        limit: int,
        *,
        latency: float = 0.0,
        error_rate: float = 0.0,
        rng: random.Random | None = None,
        sleep: Sleeper = asyncio.sleep,
    ) -> None:
        if not 0 <= error_rate <= 1:
            raise ValueError(f"error rate must be within 0..1, not {error_rate}")
        self.limit = limit
        self.latency = latency
        self.error_rate = error_rate
        self._rng = rng or random.Random()
        self._sleep = sleep
        self.calls = 0

    @classmethod
    def from_settings(
        cls, settings: Settings, *, rng: random.Random | None = None, sleep: Sleeper = asyncio.sleep
    ) -> SimulatedProvider:
        return cls(
            settings.payment_limit,
            latency=settings.payment_latency,
            error_rate=settings.payment_error_rate,
            rng=rng,
            sleep=sleep,
        )

    async def _call(self, what: str, payment_id: str) -> None:
        self.calls += 1
        if self.latency > 0:
            await self._sleep(self.latency)
        # ``random() < rate``: 0 never fails, 1 always does.
        if self.error_rate > 0 and self._rng.random() < self.error_rate:
            raise ProviderError(f"payment provider failed to {what} {payment_id} (simulated); retry")

    async def charge(self, payment_id: str, amount: int, currency: str) -> ProviderDecision:
        await self._call("charge", payment_id)
        if amount > self.limit:
            return ProviderDecision(False, f"amount {amount} {currency} is above the limit {self.limit}")
        return ProviderDecision(True)

    async def refund(self, payment_id: str, amount: int, currency: str) -> None:
        await self._call("refund", payment_id)
