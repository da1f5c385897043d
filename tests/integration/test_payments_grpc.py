"""PaymentService over a real gRPC server on a socket, called through ``PaymentsClient``:
statuses, field violations, service-only auth, retries, and the outcomes recorded behind them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import pytest

from ordermesh.auth import Tokens
from ordermesh.client.payments import PaymentsClient
from ordermesh.clock import FakeClock
from ordermesh.config import Settings
from ordermesh.contracts import payments as contract
from ordermesh.errors import (
    DomainError,
    InfrastructureError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    ValidationError,
)
from ordermesh.payments.v1 import payments_pb2 as pb
from ordermesh.payments.v1 import payments_pb2_grpc as pb_grpc
from ordermesh.rpc.server import build_server
from ordermesh.services.payments.domain import CANCELLED_BEFORE_CHARGE
from ordermesh.services.payments.grpc_api import SERVICE_NAME, PaymentGrpcService
from ordermesh.services.payments.service import PaymentService
from tests.helpers import LIMIT, Provider, open_service


def code_of(error: BaseException) -> grpc.StatusCode:
    cause = error.__cause__
    assert isinstance(cause, grpc.aio.AioRpcError)
    return cause.code()


@dataclass
class Server:
    target: str
    tokens: Tokens
    service: PaymentService
    provider: Provider

    def client(self, token: str | None = None, **kw: float) -> PaymentsClient:
        return PaymentsClient(self.target, token or self.tokens.issue_service("orders"), **kw)


@pytest.fixture
async def server(sql_url: str) -> AsyncIterator[Server]:
    provider = Provider()
    service = await open_service(sql_url, provider, FakeClock())
    tokens = Tokens(Settings())
    grpc_server = build_server(
        registrations=[PaymentGrpcService(service).register], service_names=[SERVICE_NAME], tokens=tokens
    )
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    try:
        yield Server(f"127.0.0.1:{port}", tokens, service, provider)
    finally:
        await grpc_server.stop(None)
        await service.store.db.close()


async def test_charge_get_and_refund(server: Server) -> None:
    async with server.client() as client:
        result = await client.process_payment("o-1", 1250, "EUR")
        assert (result.status, result.amount, result.currency) == ("succeeded", 1250, "EUR")
        assert result.succeeded
        payment = await client.get_payment("o-1")
        assert (payment.status, payment.charged, payment.refunded) == ("succeeded", 1250, 0)
        assert payment.payment_id == result.payment_id
        assert payment.created_at == datetime(2026, 1, 1, tzinfo=UTC)  # the injected clock's time
        refund = await client.refund("o-1", "customer changed their mind")
        again = await client.refund("o-1")
        assert (refund.refunded_now, refund.refunded_total, refund.status) == (1250, 1250, "refunded")
        assert (again.refunded_now, again.refunded_total) == (0, 1250)
        assert (await client.get_payment("o-1")).refund_reason == "customer changed their mind"
    assert len(server.provider.refunds) == 1


async def test_decline_above_the_limit(server: Server) -> None:
    async with server.client() as client:
        result = await client.process_payment("o-1", LIMIT + 1, "EUR")
        assert result.status == "declined" and "limit" in result.decline_reason
        assert (await client.get_payment("o-1")).status == "declined"
        assert (await client.refund("o-1")).refunded_now == 0


async def test_retries_and_concurrent_calls_charge_once(server: Server) -> None:
    async with server.client() as client:
        results = await asyncio.gather(*(client.process_payment("o-1", 700, "EUR") for _ in range(20)))
        assert len(set(results)) == 1 and results[0].succeeded
        assert await client.process_payment("o-1", 700, "EUR") == results[0]
        with pytest.raises(DomainError, match="already charged 700 EUR"):
            await client.process_payment("o-1", 701, "EUR")
    assert len(server.provider.charges) == 1
    assert len(await server.service.store.ledger("o-1")) == 1
    assert len(await server.service.outbox.pending(100)) == 1


async def test_a_refund_before_the_charge_wins(server: Server) -> None:
    async with server.client() as client:
        early = await client.refund("o-1", "saga compensation")
        assert (early.refunded_now, early.status) == (0, "cancelled")
        assert (await client.get_payment("o-1")).status == "cancelled"
        late = await client.process_payment("o-1", 1250, "EUR")
        assert late.status == "declined" and late.decline_reason == CANCELLED_BEFORE_CHARGE
    assert server.provider.charges == []


async def test_invalid_input_is_invalid_argument_with_field_violations(server: Server) -> None:
    async with server.client() as client:
        with pytest.raises(ValidationError) as bad:
            await client.process_payment("", 0, "eur")
        assert {v.field for v in bad.value.violations} == {"order_id", "amount", "currency"}
        with pytest.raises(ValidationError) as negative:
            await client.process_payment("o-1", -5, "EURO")
        assert {v.field for v in negative.value.violations} == {"amount", "currency"}
        with pytest.raises(ValidationError) as refund:
            await client.refund("", "x" * 501)
        assert {v.field for v in refund.value.violations} == {"order_id", "reason"}
        with pytest.raises(ValidationError):
            await client.get_payment("")
    # The raw status, as any gRPC client sees it.
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.PaymentServiceStub(channel)
        metadata = (("authorization", f"Bearer {server.tokens.issue_service('orders')}"),)
        with pytest.raises(grpc.aio.AioRpcError) as raw:
            await stub.ProcessPayment(pb.ProcessPaymentRequest(order_id="o-1"), metadata=metadata, timeout=5)
        assert raw.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert server.provider.charges == []


async def test_only_services_may_call(server: Server) -> None:
    async with server.client(server.tokens.issue("alice")) as user:
        for call in (user.process_payment("o-1", 100, "EUR"), user.refund("o-1"), user.get_payment("o-1")):
            with pytest.raises(PermissionDenied):
                await call
    async with PaymentsClient(server.target, None) as anonymous:
        with pytest.raises(Unauthenticated):
            await anonymous.get_payment("o-1")
    assert server.provider.charges == [] and await server.service.store.audit() == []
    with pytest.raises(NotFound):
        await server.service.get_payment("o-1")


async def test_not_found_for_an_order_without_payment(server: Server) -> None:
    async with server.client() as client:
        with pytest.raises(NotFound):
            await client.get_payment("nope")


async def test_a_provider_error_is_unavailable_records_nothing_and_the_client_retries(server: Server) -> None:
    server.provider.error_rate = 1.0
    async with server.client(retries=2) as client:
        with pytest.raises(InfrastructureError, match="provider failed") as failed:
            await client.process_payment("o-1", 1250, "EUR")
        assert code_of(failed.value) is grpc.StatusCode.UNAVAILABLE
        assert server.provider.calls == 3  # the first call and two retries
        with pytest.raises(NotFound):
            await client.get_payment("o-1")
        assert await server.service.outbox.pending(10) == []

        fails = asyncio.get_running_loop().call_later(0.02, setattr, server.provider, "error_rate", 0.0)
        result = await client.process_payment("o-1", 1250, "EUR", timeout=5)  # retried until it works
        fails.cancel()
        assert result.succeeded
    assert [m.routing_key for m in [o.message for o in await server.service.outbox.pending(10)]] == [
        contract.PAYMENT_PROCESSED
    ]


async def test_the_deadline_bounds_a_slow_provider(server: Server) -> None:
    server.provider.gate = asyncio.Event()  # the provider never answers
    async with server.client(retries=0) as client:
        with pytest.raises(InfrastructureError) as late:
            await client.process_payment("o-1", 1250, "EUR", timeout=0.2)
        assert code_of(late.value) is grpc.StatusCode.DEADLINE_EXCEEDED
    server.provider.gate.set()
    async with server.client() as client:
        assert (await client.process_payment("o-1", 1250, "EUR")).succeeded
    assert len(await server.service.store.ledger("o-1")) == 1


async def test_the_client_retries_while_another_replica_charges_the_order(
    server: Server, sql_url: str
) -> None:
    server.service.settle_wait = 0.05  # then ABORTED: the charge is in flight elsewhere
    other_provider = Provider()
    other_provider.gate = asyncio.Event()
    other = await open_service(sql_url, other_provider, FakeClock())
    try:
        charging = asyncio.create_task(other.process_payment("o-1", 1250, "EUR"))
        await other_provider.entered.wait()
        asyncio.get_running_loop().call_later(0.2, other_provider.gate.set)
        async with server.client(retries=8) as client:
            result = await client.process_payment("o-1", 1250, "EUR", timeout=10)
        assert result.succeeded and result.payment_id == (await charging).payment_id
        assert server.provider.charges == [] and len(other_provider.charges) == 1
    finally:
        await other.store.db.close()
