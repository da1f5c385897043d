"""The order service as the kit builds it: REST and gRPC on one ``OrderSystem``, plus the outbox
relay that publishes its events to the ``orders`` exchange."""

from __future__ import annotations

from ordermesh.eventstore.subscription import CheckpointStore, MemoryCheckpoints, SqlCheckpoints
from ordermesh.kit import Runtime, ServiceSpec
from ordermesh.messaging import Broker
from ordermesh.messaging import metrics as relay_metrics
from ordermesh.messaging.relay import OutboxRelay, ParkingLot
from ordermesh.services.orders.app import TITLE, install_order_api
from ordermesh.services.orders.grpc_api import SERVICE_NAME, OrderGrpcService
from ordermesh.services.orders.outbox import EXCHANGE, RELAY_NAME, OrderMessages
from ordermesh.services.orders.rest import BEARER
from ordermesh.services.orders.runtime import OrderSystem, build_order_system


async def relay_checkpoints(system: OrderSystem) -> CheckpointStore:
    """Where the relay keeps how far it has published (``ordermesh outbox status`` reads it)."""
    return await SqlCheckpoints.open(system.db) if system.db else MemoryCheckpoints()


async def relay_for(system: OrderSystem, broker: Broker) -> OutboxRelay:
    """The relay from the order events to the ``orders`` exchange: the service's, and the one
    ``ordermesh outbox replay`` offers parked messages through, so both follow the same rules."""
    return OutboxRelay(
        system.store,
        await relay_checkpoints(system),
        broker,
        EXCHANGE,
        OrderMessages(system.service),
        name=RELAY_NAME,
        parking=await ParkingLot.open(system.db),
    )


async def build(rt: Runtime) -> None:
    system = await build_order_system(rt.database_url, rt.clock, rt.settings.snapshot_every)
    rt.stack.push_async_callback(system.close)
    await system.start()
    rt.ready_check(system.ready)
    install_order_api(rt.app, rt.tokens, system)
    orders_rpc = OrderGrpcService(system)
    rt.grpc(orders_rpc.register, SERVICE_NAME)
    rt.on_drain(orders_rpc.shutdown)  # open streams end with UNAVAILABLE: clients resume elsewhere
    relay = await relay_for(system, await rt.broker())
    relay_metrics.register(rt.metrics, lambda: [relay])
    rt.background("outbox-relay", relay.run)


SPEC = ServiceSpec(
    name="orders",
    title=TITLE,
    build=build,
    http_port="http_port",
    grpc_port="grpc_port",
    security_schemes=BEARER,
)
