"""The payment use cases: charge, refund and read an order's payment, idempotently by order id.

A charge first *claims* the order (a PENDING row, one statement), then asks the provider, then
records the outcome, its ledger entry and its message in one transaction. So:

- concurrent charges of one order reach the provider once: in this process they queue on a
  per-order lock and find the outcome; another process's claim makes them wait for it (up to
  ``settle_wait`` seconds, then ``IdempotencyKeyInUse`` -> ABORTED: retry);
- a provider failure releases the claim and records nothing: the retry starts afresh;
- a process that dies with a claim leaves it PENDING; after ``claim_ttl`` a retry takes it over
  and charges again under the same payment id (which a real provider charges once).

A refund that finds no payment (the saga's compensation overtook its charge) records the order
as CANCELLED, and the late charge is then DECLINED ("refunded/cancelled before charge"): the
compensation wins.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from pydantic import BaseModel

from ordermesh.clock import Clock, SystemClock
from ordermesh.contracts import payments as contract
from ordermesh.db import Tx
from ordermesh.errors import DomainError, IdempotencyKeyInUse, NotFound
from ordermesh.messaging.outbox import SqlOutbox
from ordermesh.messaging.port import Message
from ordermesh.services.payments.domain import (
    ChargeResult,
    Payment,
    RefundResult,
    Status,
    check_charge,
    check_order_id,
    check_refund,
    payment_id_for,
)
from ordermesh.services.payments.provider import PaymentProvider
from ordermesh.services.payments.store import PaymentStore


class _OrderLocks:
    """One asyncio lock per order id in use, dropped when its last holder leaves."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class PaymentService:
    def __init__(
        self,
        store: PaymentStore,
        outbox: SqlOutbox,
        provider: PaymentProvider,
        clock: Clock | None = None,
        *,
        claim_ttl: float = 30.0,
        settle_wait: float = 2.0,
        poll_interval: float = 0.02,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.provider = provider
        self.clock = clock or SystemClock()
        self.claim_ttl = timedelta(seconds=claim_ttl)
        self.settle_wait = settle_wait
        self.poll_interval = poll_interval
        self._locks = _OrderLocks()

    async def get_payment(self, order_id: str) -> Payment:
        check_order_id(order_id)
        payment = await self.store.get(order_id)
        if payment is None:
            raise NotFound(f"order {order_id!r} has no payment")
        return payment

    async def process_payment(self, order_id: str, amount: int, currency: str) -> ChargeResult:
        """Charge the order once; a retry answers the first outcome."""
        check_charge(order_id, amount, currency)
        async with self._locks.hold(order_id):
            return await self._charge(order_id, amount, currency)

    async def refund(self, order_id: str, reason: str = "") -> RefundResult:
        """Refund the order's whole charge once; 0 when already refunded, declined or never charged."""
        check_refund(order_id, reason)
        async with self._locks.hold(order_id):
            return await self._refund(order_id, reason)

    async def _charge(self, order_id: str, amount: int, currency: str) -> ChargeResult:
        payment_id = payment_id_for(order_id)
        started = asyncio.get_running_loop().time()
        while True:
            now, claim = self.clock.now(), uuid.uuid4().hex
            if not await self.store.claim(
                order_id, payment_id, amount, currency, claim, now, now - self.claim_ttl
            ):
                existing = await self.store.get(order_id)
                if existing is None:  # released between our claim and our read: try again
                    continue
                if existing.status is Status.CANCELLED:
                    declined = await self._decline_cancelled(order_id, amount, currency)
                    if declined is None:
                        continue
                    return ChargeResult.of(declined)
                _same_request(existing, amount, currency)
                if existing.status is Status.PENDING:
                    await self._wait(order_id, started)
                    continue
                return ChargeResult.of(existing)
            try:
                decision = await self.provider.charge(payment_id, amount, currency)
                payment = await self._settle_charge(order_id, claim, decision.approved, decision.reason)
            except BaseException:
                # Nothing recorded (or the record failed): forget the claim so a retry may charge.
                await self.store.release(order_id, claim)
                raise
            if payment is not None:
                return ChargeResult.of(payment)

    async def _settle_charge(self, order_id: str, claim: str, approved: bool, reason: str) -> Payment | None:
        now = self.clock.now()
        async with self.store.transaction() as tx:
            payment = await self.store.settle_charge(tx, order_id, claim, approved, reason, now)
            if payment is None:
                return None
            if approved:
                await self.store.record(tx, payment, "charge", payment.amount, now)
                await self._publish(tx, contract.PAYMENT_PROCESSED, order_id, _processed(payment))
            else:
                await self._publish(tx, contract.PAYMENT_FAILED, order_id, _failed(payment))
        self.outbox.wake()
        return payment

    async def _decline_cancelled(self, order_id: str, amount: int, currency: str) -> Payment | None:
        async with self.store.transaction() as tx:
            payment = await self.store.decline_cancelled(tx, order_id, amount, currency, self.clock.now())
            if payment is not None:
                await self._publish(tx, contract.PAYMENT_FAILED, order_id, _failed(payment))
        if payment is not None:
            self.outbox.wake()
        return payment

    async def _refund(self, order_id: str, reason: str) -> RefundResult:
        started = asyncio.get_running_loop().time()
        while True:
            payment = await self.store.get(order_id)
            now = self.clock.now()
            if payment is None:
                if await self.store.cancel_before_charge(order_id, payment_id_for(order_id), reason, now):
                    return RefundResult(order_id, payment_id_for(order_id), 0, 0, "", Status.CANCELLED)
                continue  # a charge claimed the order meanwhile
            if payment.status is Status.PENDING:
                stale = payment.claimed_at is not None and payment.claimed_at < now - self.claim_ttl
                if stale:
                    # Its charger died, outcome unknown: void the payment id at the provider first.
                    await self.provider.refund(payment.payment_id, payment.amount, payment.currency)
                    await self.store.cancel_stale(order_id, reason, now, now - self.claim_ttl)
                else:
                    await self._wait(order_id, started)
                continue
            if payment.status is Status.SUCCEEDED:
                await self.provider.refund(payment.payment_id, payment.charged, payment.currency)
                refunded = await self._settle_refund(order_id, reason)
                if refunded is None:
                    continue
                return _refund_result(refunded, refunded.refunded)
            return _refund_result(payment, 0)

    async def _settle_refund(self, order_id: str, reason: str) -> Payment | None:
        now = self.clock.now()
        async with self.store.transaction() as tx:
            payment = await self.store.settle_refund(tx, order_id, reason, now)
            if payment is None:
                return None
            await self.store.record(tx, payment, "refund", payment.refunded, now)
            body = contract.PaymentRefunded(
                order_id=order_id,
                payment_id=payment.payment_id,
                amount=payment.refunded,
                currency=payment.currency,
                reason=reason,
            )
            await self._publish(tx, contract.PAYMENT_REFUNDED, order_id, body)
        self.outbox.wake()
        return payment

    async def _publish(self, tx: Tx, routing_key: str, order_id: str, body: BaseModel) -> None:
        message = Message.json(
            routing_key,
            body.model_dump(mode="json"),
            message_id=contract.message_id(routing_key, order_id),
            correlation_id=order_id,
            occurred_at=self.clock.now(),
            schema_version=contract.SCHEMA_VERSION,
        )
        await self.outbox.add(tx, contract.EXCHANGE, [message])

    async def _wait(self, order_id: str, started: float) -> None:
        """Another process's charge of this order is in flight: give it ``settle_wait`` seconds."""
        if asyncio.get_running_loop().time() - started >= self.settle_wait:
            raise IdempotencyKeyInUse(f"a charge of order {order_id!r} is still in flight: retry later")
        await asyncio.sleep(self.poll_interval)


def _same_request(payment: Payment, amount: int, currency: str) -> None:
    if (payment.amount, payment.currency) != (amount, currency):
        verb = {Status.PENDING: "is being charged", Status.DECLINED: "was already declined for"}.get(
            payment.status, "was already charged"
        )
        raise DomainError(
            f"order {payment.order_id!r} {verb} {payment.amount} {payment.currency} "
            f"({payment.status.value}); a charge of {amount} {currency} cannot follow"
        )


def _processed(payment: Payment) -> contract.PaymentProcessed:
    return contract.PaymentProcessed(
        order_id=payment.order_id,
        payment_id=payment.payment_id,
        amount=payment.amount,
        currency=payment.currency,
    )


def _failed(payment: Payment) -> contract.PaymentFailed:
    return contract.PaymentFailed(
        order_id=payment.order_id,
        payment_id=payment.payment_id,
        amount=payment.amount,
        currency=payment.currency,
        reason=payment.decline_reason,
    )


def _refund_result(payment: Payment, now: int) -> RefundResult:
    return RefundResult(
        payment.order_id, payment.payment_id, now, payment.refunded, payment.currency, payment.status
    )
