"""The payment service as the kit runs it: its own database (payments and ledger), an outbox
published to the ``payments`` exchange, the simulated provider configured by
``ORDERMESH_PAYMENT_LIMIT``/``_LATENCY``/``_ERROR_RATE``, and ``PaymentService`` on
``ORDERMESH_PAYMENTS_GRPC_PORT`` (health and metrics on ``ORDERMESH_PAYMENTS_HTTP_PORT``); with
``ORDERMESH_SAGA=choreographed``, also its reactions to the order events (``consumers``)."""

from __future__ import annotations

from ordermesh.contracts.payments import EXCHANGE
from ordermesh.kit import Runtime, ServiceSpec
from ordermesh.messaging.inbox import SqlInbox
from ordermesh.messaging.metrics import ConsumerMetrics
from ordermesh.services.payments.consumers import INBOX_CONSUMER, QUEUES, start_payment_consumers
from ordermesh.services.payments.grpc_api import SERVICE_NAME, PaymentGrpcService
from ordermesh.services.payments.provider import SimulatedProvider
from ordermesh.services.payments.service import PaymentService
from ordermesh.services.payments.store import PaymentStore


async def build(rt: Runtime) -> None:
    store = await PaymentStore.open(await rt.database())
    provider = SimulatedProvider.from_settings(rt.settings)
    service = PaymentService(store, await rt.outbox(EXCHANGE), provider, rt.clock)
    rt.grpc(PaymentGrpcService(service).register, SERVICE_NAME)
    if rt.settings.saga == "choreographed":
        inbox = await SqlInbox.open(await rt.database(), INBOX_CONSUMER, rt.clock)
        metrics = ConsumerMetrics(rt.metrics)
        for sub in await start_payment_consumers(await rt.broker(), service, inbox, metrics):
            rt.stack.push_async_callback(sub.stop)  # before the broker closes: in-flight ones finish


SPEC = ServiceSpec(
    name="payments",
    title="ordermesh payments",
    build=build,
    http_port="payments_http_port",
    grpc_port="payments_grpc_port",
    queues=tuple(QUEUES),
)

__all__ = ["SPEC", "build"]
