"""The payment service on its own database, for tests that drive it directly: the simulated
provider, counting what it is asked and holding charges at a gate when a test says, and
``open_service`` to build a ``PaymentService`` on a database URL."""

from __future__ import annotations

import asyncio

from ordermesh.clock import FakeClock
from ordermesh.db import connect
from ordermesh.messaging.outbox import SqlOutbox
from ordermesh.services.payments.provider import ProviderDecision, SimulatedProvider
from ordermesh.services.payments.service import PaymentService
from ordermesh.services.payments.store import PaymentStore

LIMIT = 100_000  # minor units: the provider declines a charge above it


class Provider(SimulatedProvider):
    """The simulated provider, counting charges and refunds, optionally held at a gate."""

    def __init__(self, error_rate: float = 0.0) -> None:
        self.slept: list[float] = []

        async def sleep(seconds: float) -> None:
            self.slept.append(seconds)

        super().__init__(LIMIT, latency=0.25, error_rate=error_rate, sleep=sleep)
        self.charges: list[str] = []
        self.refunds: list[tuple[str, int]] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def charge(self, payment_id: str, amount: int, currency: str) -> ProviderDecision:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        decision = await super().charge(payment_id, amount, currency)
        self.charges.append(payment_id)
        return decision

    async def refund(self, payment_id: str, amount: int, currency: str) -> None:
        await super().refund(payment_id, amount, currency)
        self.refunds.append((payment_id, amount))


async def open_service(
    url: str, provider: Provider, clock: FakeClock, outbox_type: type[SqlOutbox] = SqlOutbox, **kw: float
) -> PaymentService:
    """The service on ``url`` (its tables made if missing), its outbox of ``outbox_type``."""
    db = await connect(url)
    store = await PaymentStore.open(db)
    outbox = await outbox_type.open(db)
    assert isinstance(outbox, outbox_type)
    return PaymentService(store, outbox, provider, clock, **kw)


__all__ = ["LIMIT", "Provider", "open_service"]
