"""The inventory service as the kit runs it: its own database (the demo catalog stocked on first
start), an outbox published to the ``inventory`` exchange, and ``InventoryService`` on
``ORDERMESH_INVENTORY_GRPC_PORT`` (health and metrics on ``ORDERMESH_INVENTORY_HTTP_PORT``); with
``ORDERMESH_SAGA=choreographed``, also its reactions to the order and payment events (``consumers``)."""

from __future__ import annotations

from ordermesh.contracts.inventory import EXCHANGE
from ordermesh.kit import Runtime, ServiceSpec
from ordermesh.messaging.inbox import SqlInbox
from ordermesh.messaging.metrics import ConsumerMetrics
from ordermesh.services.inventory.consumers import (
    INBOX_CONSUMER,
    QUEUES,
    InventoryReactions,
    start_inventory_consumers,
)
from ordermesh.services.inventory.grpc_api import SERVICE_NAME, InventoryGrpcService
from ordermesh.services.inventory.store import InventoryStore


async def build(rt: Runtime) -> None:
    store = await InventoryStore.open(await rt.database(), await rt.outbox(EXCHANGE), rt.clock)
    await store.seed()
    rt.grpc(InventoryGrpcService(store).register, SERVICE_NAME)
    if rt.settings.saga == "choreographed":
        db = await rt.database()
        reactions = await InventoryReactions.open(
            db, store, await SqlInbox.open(db, INBOX_CONSUMER, rt.clock)
        )
        metrics = ConsumerMetrics(rt.metrics)
        for sub in await start_inventory_consumers(await rt.broker(), reactions, metrics):
            rt.stack.push_async_callback(sub.stop)  # before the broker closes: in-flight ones finish


SPEC = ServiceSpec(
    name="inventory",
    title="ordermesh inventory",
    build=build,
    http_port="inventory_http_port",
    grpc_port="inventory_grpc_port",
    queues=tuple(QUEUES),
)

__all__ = ["SPEC", "build"]
