"""The order service as the kit builds it: REST and gRPC on one ``OrderSystem``, the outbox
relay that publishes its events to the ``orders`` exchange, and the saga manager that fulfils
every order (``ORDERMESH_SAGA=orchestrated``)."""

from __future__ import annotations

from ordermesh.auth import TokenSource
from ordermesh.client.inventory import InventoryClient
from ordermesh.client.payments import PaymentsClient
from ordermesh.client.shipping import ShippingClient
from ordermesh.contracts.orders import MUST_ARRIVE
from ordermesh.errors import ConfigError
from ordermesh.eventstore.subscription import CheckpointStore, MemoryCheckpoints, SqlCheckpoints
from ordermesh.kit import Runtime, ServiceSpec
from ordermesh.messaging import Broker
from ordermesh.messaging import metrics as relay_metrics
from ordermesh.messaging.relay import OutboxRelay, ParkingLot
from ordermesh.ratelimit import RateLimiter
from ordermesh.saga import MemorySagaStore, SagaPolicy, SagaRunner, SagaStore, SqlSagaStore
from ordermesh.services.orders.app import TITLE, install_order_api
from ordermesh.services.orders.choreography import QUEUES as CHOREOGRAPHY_QUEUES
from ordermesh.services.orders.choreography import choreograph
from ordermesh.services.orders.grpc_api import SERVICE_NAME, OrderGrpcService
from ordermesh.services.orders.outbox import EXCHANGE, RELAY_NAME, OrderMessages
from ordermesh.services.orders.rest import BEARER
from ordermesh.services.orders.runtime import OrderSystem, build_order_system
from ordermesh.services.orders.saga import SAGA, Downstream, OrderSaga, start_sagas
from ordermesh.services.orders.tracking import tracking_timeout, use_shipping


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
        must_arrive=lambda message: message.routing_key in MUST_ARRIVE,
    )


async def build(rt: Runtime) -> None:
    system = await build_order_system(rt.database_url, rt.clock, rt.settings.snapshot_every)
    rt.stack.push_async_callback(system.close)
    await system.start()
    rt.ready_check(system.ready, "database")
    install_order_api(rt.app, rt.tokens, system)
    # The service's one shipping client: the tracking route's, whichever saga style runs, through
    # the process's shipping guard (its breaker open, tracking answers degraded at once).
    shipping = ShippingClient(
        rt.settings.effective_shipping_url,
        TokenSource(rt.tokens, "orders"),
        timeout=rt.settings.policy("shipping")["call_timeout"],
        guard=rt.guard("shipping"),
    )
    rt.stack.push_async_callback(shipping.close)
    use_shipping(rt.app, shipping, tracking_timeout(rt.settings))
    # One bucket per user for REST and gRPC writes alike (ORDERMESH_WRITE_RATE / _BURST).
    writes = RateLimiter(rt.settings.write_rate, rt.settings.write_burst, rt.clock, "orders created")
    rt.app.state.write_limiter = writes
    orders_rpc = OrderGrpcService(
        system, writes=writes, max_streams_per_user=rt.settings.max_streams_per_user
    )
    rt.grpc(orders_rpc.register, SERVICE_NAME)
    rt.on_drain(orders_rpc.shutdown)  # open streams end with UNAVAILABLE: clients resume elsewhere
    relay = await relay_for(system, await rt.broker())
    relay_metrics.register(rt.metrics, lambda: [relay])
    rt.background("outbox-relay", relay.run)
    await orchestrate(rt, system, shipping)


async def saga_store(system: OrderSystem) -> SagaStore:
    """The saga log, in the order service's own database (``ordermesh saga`` reads it)."""
    return await SqlSagaStore.open(system.db) if system.db else MemorySagaStore()


async def orchestrate(rt: Runtime, system: OrderSystem, shipping: ShippingClient) -> None:
    """The saga manager: a saga per new order, driven against payments and inventory (gRPC) and
    shipping (REST, the service's one shipping client) with the order service's own token, each
    call with its step's deadline (the saga passes it on every call)."""
    settings = rt.settings
    if settings.saga == "choreographed":  # no saga manager: the order service follows the events
        await choreograph(rt, system, await saga_store(system), await relay_checkpoints(system))
        return
    if settings.saga != "orchestrated":
        raise ConfigError(f"ORDERMESH_SAGA={settings.saga!r} is not a saga style", "ORDERMESH_SAGA")
    token = TokenSource(rt.tokens, "orders")
    timeout = settings.saga_step_timeout
    # Each through its downstream's guard: a breaker and a bulkhead per downstream, per process.
    payments = PaymentsClient(
        settings.downstream("payments"), token, timeout=timeout, guard=rt.guard("payments")
    )
    inventory = InventoryClient(
        settings.downstream("inventory"), token, timeout=timeout, guard=rt.guard("inventory")
    )
    for client in (payments, inventory):
        rt.stack.push_async_callback(client.close)
    sagas = await saga_store(system)
    saga = OrderSaga(system.service, Downstream(payments, inventory, shipping))
    policy = SagaPolicy(step_timeout=timeout, deadline=settings.saga_deadline)
    runner = SagaRunner(sagas, {SAGA: saga.definition()}, rt.clock, policy, "orchestrated")
    rt.app.state.sagas = sagas
    checkpoints = await relay_checkpoints(system)
    rt.background("saga-runner", runner.run)
    rt.background("saga-starter", lambda stop: start_sagas(system.service, runner, checkpoints, stop))


SPEC = ServiceSpec(
    name="orders",
    title=TITLE,
    build=build,
    http_port="http_port",
    grpc_port="grpc_port",
    security_schemes=BEARER,
    queues=tuple(CHOREOGRAPHY_QUEUES),
)
