"""The payment service's use cases on its own database, SQLite and PostgreSQL: charged once per
order whatever retries and races, refunds once, compensation before charge wins, money conserved,
and every change's message in the outbox with it, or neither.

To check an adapter, subclass ``PaymentStoreContract`` and give the subclass a ``database_url``
fixture: a fresh database for each test (connected with ``ordermesh.db.connect`` for the payment
store and its outbox). ``OnSqlite`` and ``OnPostgres`` (``tests.helpers``) give the built-in ones.
An adapter no URL names overrides the ``env`` fixture instead, to hand each test an ``Env``.

    class TestSqlitePaymentStore(OnSqlite, PaymentStoreContract):
        pass
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest

from ordermesh.clock import FakeClock
from ordermesh.contracts import payments as contract
from ordermesh.db import SqlDb, Tx
from ordermesh.errors import DomainError, IdempotencyKeyInUse, InfrastructureError, NotFound
from ordermesh.messaging.memory import MemoryBroker
from ordermesh.messaging.outbox import OutboxPublisher, SqlOutbox
from ordermesh.messaging.port import Message
from ordermesh.services.payments.domain import CANCELLED_BEFORE_CHARGE, Status, payment_id_for
from ordermesh.services.payments.service import PaymentService
from ordermesh.services.payments.store import PaymentStore
from tests.helpers import LIMIT, Collector, Provider, open_service


@dataclass
class Env:
    db: SqlDb
    service: PaymentService
    provider: Provider
    clock: FakeClock

    @property
    def store(self) -> PaymentStore:
        return self.service.store

    async def outbox_rows(self) -> list[Message]:
        return [o.message for o in await self.service.outbox.pending(1000)]


class BreaksAfterAdding(SqlOutbox):
    """Adds the messages, then fails inside the same transaction (a crash before the commit)."""

    broken = True

    async def add(self, tx: Tx, exchange: str, messages: Sequence[Message]) -> None:
        await super().add(tx, exchange, messages)
        if self.broken:
            raise RuntimeError("crash before commit")


class PaymentStoreContract:
    """Every test a PaymentStore adapter must pass; a subclass gives ``database_url``."""

    @pytest.fixture
    async def env(self, database_url: str) -> AsyncIterator[Env]:
        provider, clock = Provider(), FakeClock()
        service = await open_service(database_url, provider, clock)
        yield Env(service.store.db, service, provider, clock)
        await service.store.db.close()

    async def test_a_charge_is_recorded_in_the_ledger_with_exactly_one_outbox_row(self, env: Env) -> None:
        result = await env.service.process_payment("o-1", 1250, "EUR")
        assert (result.succeeded, result.amount, result.currency) == (True, 1250, "EUR")
        assert result.payment_id == payment_id_for("o-1")
        payment = await env.service.get_payment("o-1")
        assert (payment.status, payment.charged, payment.refunded) == (Status.SUCCEEDED, 1250, 0)
        assert payment.created_at == env.clock.now()
        ledger = await env.store.ledger("o-1")
        assert [(e.kind, e.amount, e.currency) for e in ledger] == [("charge", 1250, "EUR")]
        [message] = await env.outbox_rows()
        assert message.routing_key == message.type == contract.PAYMENT_PROCESSED
        assert message.correlation_id == "o-1"
        assert message.message_id == contract.message_id(contract.PAYMENT_PROCESSED, "o-1")
        body = contract.PaymentProcessed.model_validate(message.payload())
        assert body == contract.PaymentProcessed(
            order_id="o-1", payment_id=result.payment_id, amount=1250, currency="EUR"
        )
        assert env.provider.slept == [0.25]  # latency through the injected sleeper: no real wait

    async def test_a_charge_above_the_limit_is_declined_charges_nothing_and_publishes_failed(
        self, env: Env
    ) -> None:
        result = await env.service.process_payment("o-big", LIMIT + 1, "EUR")
        assert not result.succeeded and "above the limit" in result.decline_reason
        assert (await env.service.process_payment("o-edge", LIMIT, "EUR")).succeeded
        payment = await env.service.get_payment("o-big")
        assert (payment.status, payment.charged) == (Status.DECLINED, 0)
        assert await env.store.ledger("o-big") == []
        failed = [m for m in await env.outbox_rows() if m.correlation_id == "o-big"]
        assert [m.routing_key for m in failed] == [contract.PAYMENT_FAILED]
        assert contract.PaymentFailed.model_validate(failed[0].payload()).reason == result.decline_reason

    async def test_a_retry_answers_the_first_outcome_and_another_amount_is_refused(self, env: Env) -> None:
        first = await env.service.process_payment("o-1", 1250, "EUR")
        assert await env.service.process_payment("o-1", 1250, "EUR") == first
        declined = await env.service.process_payment("o-2", LIMIT * 2, "EUR")
        assert await env.service.process_payment("o-2", LIMIT * 2, "EUR") == declined
        with pytest.raises(DomainError, match="already charged 1250 EUR") as refused:
            await env.service.process_payment("o-1", 999, "EUR")
        assert type(refused.value) is DomainError  # FAILED_PRECONDITION, not a validation error
        with pytest.raises(DomainError):
            await env.service.process_payment("o-1", 1250, "USD")
        assert len(env.provider.charges) == 2
        assert len(await env.outbox_rows()) == 2
        assert len(await env.store.ledger("o-1")) == 1

    async def test_twenty_concurrent_charges_of_one_order_charge_once(self, env: Env) -> None:
        results = await asyncio.gather(*(env.service.process_payment("o-1", 700, "EUR") for _ in range(20)))
        assert len(set(results)) == 1 and results[0].succeeded
        assert env.provider.charges == [payment_id_for("o-1")]
        assert len(await env.store.ledger("o-1")) == 1
        assert len(await env.outbox_rows()) == 1
        assert await env.store.audit() == []

    async def test_concurrent_charges_through_two_replicas_charge_once(self, database_url: str) -> None:
        provider, clock = Provider(), FakeClock()
        provider.gate = asyncio.Event()
        replicas = [await open_service(database_url, provider, clock, poll_interval=0.005) for _ in range(2)]
        try:
            calls = asyncio.gather(
                *(r.process_payment("o-1", 700, "EUR") for r in replicas for _ in range(10))
            )
            await provider.entered.wait()
            await asyncio.sleep(0.05)  # the other replica's callers find the claim and poll it
            provider.gate.set()
            results = await calls
            assert len(set(results)) == 1 and results[0].succeeded
            assert provider.charges == [payment_id_for("o-1")]
            assert len(await replicas[0].store.ledger("o-1")) == 1
            assert len(await replicas[0].outbox.pending(100)) == 1
        finally:
            for replica in replicas:
                await replica.store.db.close()

    async def test_a_charge_in_flight_elsewhere_for_too_long_is_in_use_and_retryable(
        self, database_url: str
    ) -> None:
        provider, clock = Provider(), FakeClock()
        provider.gate = asyncio.Event()
        first = await open_service(database_url, provider, clock)
        second = await open_service(database_url, provider, clock, settle_wait=0.05, poll_interval=0.01)
        try:
            charging = asyncio.create_task(first.process_payment("o-1", 700, "EUR"))
            await provider.entered.wait()
            with pytest.raises(IdempotencyKeyInUse):
                await second.process_payment("o-1", 700, "EUR")
            assert (await second.get_payment("o-1")).status is Status.PENDING
            provider.gate.set()
            assert (await charging).succeeded
            assert await second.process_payment("o-1", 700, "EUR") == await charging
        finally:
            await first.store.db.close()
            await second.store.db.close()

    async def test_a_second_refund_refunds_nothing_more(self, env: Env) -> None:
        await env.service.process_payment("o-1", 1250, "EUR")
        first = await env.service.refund("o-1", "out of stock")
        again = await env.service.refund("o-1", "out of stock")
        assert (first.refunded_now, first.refunded_total, first.status) == (1250, 1250, Status.REFUNDED)
        assert (again.refunded_now, again.refunded_total, again.status) == (0, 1250, Status.REFUNDED)
        assert env.provider.refunds == [(payment_id_for("o-1"), 1250)]
        payment = await env.service.get_payment("o-1")
        assert (payment.charged, payment.refunded, payment.refund_reason) == (1250, 1250, "out of stock")
        assert [e.kind for e in await env.store.ledger("o-1")] == ["charge", "refund"]
        refunded = [m for m in await env.outbox_rows() if m.routing_key == contract.PAYMENT_REFUNDED]
        assert len(refunded) == 1
        assert contract.PaymentRefunded.model_validate(refunded[0].payload()).amount == 1250
        # A charge retried after the refund still answers its first outcome, charging nothing more.
        assert (await env.service.process_payment("o-1", 1250, "EUR")).succeeded
        assert len(env.provider.charges) == 1

    async def test_concurrent_refunds_refund_once(self, env: Env) -> None:
        await env.service.process_payment("o-1", 1250, "EUR")
        results = await asyncio.gather(*(env.service.refund("o-1") for _ in range(10)))
        assert sorted(r.refunded_now for r in results) == [0] * 9 + [1250]
        assert len(env.provider.refunds) == 1
        assert await env.store.audit() == []

    async def test_a_declined_payment_refunds_zero(self, env: Env) -> None:
        await env.service.process_payment("o-1", LIMIT + 1, "EUR")
        result = await env.service.refund("o-1")
        assert (result.refunded_now, result.refunded_total, result.status) == (0, 0, Status.DECLINED)
        assert env.provider.refunds == [] and await env.store.ledger("o-1") == []
        assert [m.routing_key for m in await env.outbox_rows()] == [contract.PAYMENT_FAILED]

    async def test_a_refund_before_the_charge_makes_the_late_charge_declined(self, env: Env) -> None:
        early = await env.service.refund("o-1", "saga compensation")
        assert (early.refunded_now, early.refunded_total, early.status) == (0, 0, Status.CANCELLED)
        assert (await env.service.get_payment("o-1")).status is Status.CANCELLED
        assert await env.outbox_rows() == []  # no money moved: nothing to announce yet
        late = await env.service.process_payment("o-1", 1250, "EUR")
        assert not late.succeeded and late.decline_reason == CANCELLED_BEFORE_CHARGE
        assert env.provider.charges == []
        assert await env.service.process_payment("o-1", 1250, "EUR") == late
        payment = await env.service.get_payment("o-1")
        assert (payment.status, payment.amount, payment.charged) == (Status.DECLINED, 1250, 0)
        assert [m.routing_key for m in await env.outbox_rows()] == [contract.PAYMENT_FAILED]
        assert (await env.service.refund("o-1")).refunded_now == 0

    async def test_refunds_racing_charges_conserve_money(self, env: Env) -> None:
        orders = [f"o-{i}" for i in range(15)]
        calls = []
        for i, order in enumerate(orders):
            charge, refund = env.service.process_payment(order, 100 + i, "EUR"), env.service.refund(order)
            calls += [charge, refund] if i % 2 else [refund, charge]
        await asyncio.gather(*calls)
        for order in orders:
            payment = await env.service.get_payment(order)
            # Either the charge came first and was refunded, or the refund first and the charge declined.
            assert payment.status in (Status.REFUNDED, Status.DECLINED)
            assert payment.charged == payment.refunded
        assert await env.store.audit() == []

    async def test_the_audit_sees_money_that_does_not_add_up(self, env: Env) -> None:
        await env.service.process_payment("o-1", 1250, "EUR")
        assert await env.store.audit() == []
        await env.db.execute(
            "INSERT INTO payment_ledger (order_id, payment_id, kind, amount, currency, recorded_at) "
            "VALUES ('o-ghost', 'p', 'charge', 5, 'EUR', 0)"
            if env.db.dialect == "sqlite"
            else "INSERT INTO payment_ledger (order_id, payment_id, kind, amount, currency, recorded_at) "
            "VALUES ('o-ghost', 'p', 'charge', 5, 'EUR', now())"
        )
        await env.db.execute("UPDATE payments SET refunded = 1 WHERE order_id = 'o-1'")
        assert sorted(p.split(":")[0] for p in await env.store.audit()) == ["o-1", "o-ghost"]

    async def test_a_provider_error_records_nothing_and_a_retry_is_safe(self, env: Env) -> None:
        env.provider.error_rate = 1.0
        with pytest.raises(InfrastructureError):
            await env.service.process_payment("o-1", 1250, "EUR")
        with pytest.raises(NotFound):
            await env.service.get_payment("o-1")
        assert await env.store.ledger("o-1") == [] and await env.outbox_rows() == []
        env.provider.error_rate = 0.0
        assert (await env.service.process_payment("o-1", 1250, "EUR")).succeeded
        env.provider.error_rate = 1.0
        with pytest.raises(InfrastructureError):
            await env.service.refund("o-1")
        assert (await env.service.get_payment("o-1")).refunded == 0
        env.provider.error_rate = 0.0
        assert (await env.service.refund("o-1")).refunded_now == 1250
        assert [m.routing_key for m in await env.outbox_rows()] == [
            contract.PAYMENT_PROCESSED,
            contract.PAYMENT_REFUNDED,
        ]

    async def test_a_rolled_back_change_publishes_nothing(self, database_url: str) -> None:
        provider, clock = Provider(), FakeClock()
        service = await open_service(database_url, provider, clock, BreaksAfterAdding)
        try:
            with pytest.raises(RuntimeError, match="crash before commit"):
                await service.process_payment("o-1", 1250, "EUR")
            assert await service.outbox.pending(10) == []
            assert await service.store.ledger("o-1") == []
            with pytest.raises(NotFound):  # the claim was released too: a retry may charge
                await service.get_payment("o-1")
            assert isinstance(service.outbox, BreaksAfterAdding)
            service.outbox.broken = False
            assert (await service.process_payment("o-1", 1250, "EUR")).succeeded
            assert len(await service.outbox.pending(10)) == 1
            assert await service.store.audit() == []
        finally:
            await service.store.db.close()

    async def test_a_claim_left_by_a_dead_process_is_taken_over_after_its_ttl(self, env: Env) -> None:
        env.service.settle_wait = 0.0
        now = env.clock.now()
        assert await env.store.claim("o-1", payment_id_for("o-1"), 1250, "EUR", "dead", now, now)
        with pytest.raises(IdempotencyKeyInUse):
            await env.service.process_payment("o-1", 1250, "EUR")
        env.clock.advance(env.service.claim_ttl.total_seconds() + 1)
        with pytest.raises(DomainError):  # a takeover keeps the claim's amount
            await env.service.process_payment("o-1", 999, "EUR")
        assert (await env.service.process_payment("o-1", 1250, "EUR")).succeeded
        assert env.provider.charges == [payment_id_for("o-1")]
        assert await env.store.audit() == []

    async def test_a_refund_of_a_dead_processs_claim_voids_it_and_cancels_the_order(self, env: Env) -> None:
        now = env.clock.now()
        assert await env.store.claim("o-1", payment_id_for("o-1"), 1250, "EUR", "dead", now, now)
        env.clock.advance(env.service.claim_ttl.total_seconds() + 1)
        result = await env.service.refund("o-1", "compensation")
        assert (result.refunded_now, result.status) == (0, Status.CANCELLED)
        assert env.provider.refunds == [(payment_id_for("o-1"), 1250)]
        assert not (await env.service.process_payment("o-1", 1250, "EUR")).succeeded

    async def test_published_messages_reach_the_payments_exchange(self, env: Env) -> None:
        broker = MemoryBroker()
        await broker.declare_exchange(contract.EXCHANGE)
        seen = Collector()
        await broker.subscribe("audit", contract.EXCHANGE, ["payment.#"], seen, prefetch=1)
        await env.service.process_payment("o-1", 1250, "EUR")
        await env.service.process_payment("o-2", LIMIT + 1, "EUR")
        await env.service.refund("o-1")
        publisher = OutboxPublisher(env.service.outbox, broker)
        assert await publisher.step() == 3
        got = await seen.wait_for(3)
        assert [(d.message.routing_key, d.message.correlation_id) for d in got] == [
            (contract.PAYMENT_PROCESSED, "o-1"),
            (contract.PAYMENT_FAILED, "o-2"),
            (contract.PAYMENT_REFUNDED, "o-1"),
        ]
        for delivery in got:
            contract.BODIES[delivery.message.routing_key].model_validate(delivery.message.payload())
        assert await env.outbox_rows() == []
        await broker.close()
