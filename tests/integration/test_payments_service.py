"""The whole payment service as the kit runs it (``kit.testing.running``): gRPC on a real port,
health and readiness over HTTP, and its outcomes on the ``payments`` exchange of a real broker."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ordermesh.client.payments import PaymentsClient
from ordermesh.clock import FakeClock
from ordermesh.config import Settings
from ordermesh.contracts import payments as contract
from ordermesh.errors import InfrastructureError, NotFound, PermissionDenied
from ordermesh.kit.testing import running
from ordermesh.services.payments.grpc_api import SERVICE_NAME
from ordermesh.services.payments.spec import SPEC
from tests.helpers import Collector


def settings(tmp_path: Path, sql_url: str, broker_url: str = "memory://", **over: object) -> Settings:
    return Settings(
        data_dir=tmp_path, payments_database_url=sql_url, broker_url=broker_url, payment_limit=5000, **over
    )


async def test_the_service_charges_refunds_and_publishes(
    tmp_path: Path, sql_url: str, broker_url: str
) -> None:
    async with running(SPEC, settings(tmp_path, sql_url, broker_url), FakeClock()) as rt:
        seen = Collector()
        await (await rt.broker()).subscribe("t.payments", contract.EXCHANGE, ["payment.#"], seen, prefetch=10)
        async with PaymentsClient(rt.grpc_target, rt.tokens.issue_service("orders")) as client:
            assert (await client.process_payment("o-1", 1250, "EUR")).succeeded
            declined = await client.process_payment("o-2", 5001, "EUR")
            assert declined.status == "declined" and "limit 5000" in declined.decline_reason
            assert (await client.refund("o-1", "compensation")).refunded_now == 1250
            assert (await client.get_payment("o-1")).status == "refunded"
        got = await seen.wait_for(3)
        assert sorted((d.message.routing_key, d.message.correlation_id) for d in got) == [
            (contract.PAYMENT_FAILED, "o-2"),
            (contract.PAYMENT_PROCESSED, "o-1"),
            (contract.PAYMENT_REFUNDED, "o-1"),
        ]
        for d in got:
            assert d.message.message_id == contract.message_id(
                d.message.routing_key, "o-1" if d.message.routing_key != contract.PAYMENT_FAILED else "o-2"
            )


async def test_health_readiness_and_service_only_auth(tmp_path: Path, sql_url: str) -> None:
    async with running(SPEC, settings(tmp_path, sql_url)) as rt:
        async with aiohttp.ClientSession() as http:
            for path in ("/livez", "/readyz"):
                async with http.get(rt.http_url + path) as response:
                    assert response.status == 200, path
        async with grpc.aio.insecure_channel(rt.grpc_target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        async with PaymentsClient(rt.grpc_target, rt.tokens.issue("alice")) as user:
            with pytest.raises(PermissionDenied):
                await user.process_payment("o-1", 100, "EUR")
        async with PaymentsClient(rt.grpc_target, rt.tokens.issue_service("orders")) as client:
            with pytest.raises(NotFound):
                await client.get_payment("o-1")


async def test_the_configured_error_rate_fails_calls_as_unavailable(tmp_path: Path, sql_url: str) -> None:
    async with running(SPEC, settings(tmp_path, sql_url, payment_error_rate=1.0)) as rt:
        client = PaymentsClient(rt.grpc_target, rt.tokens.issue_service("orders"), retries=1)
        async with client:
            with pytest.raises(InfrastructureError, match="provider failed"):
                await client.process_payment("o-1", 100, "EUR")
            with pytest.raises(NotFound):
                await client.get_payment("o-1")
