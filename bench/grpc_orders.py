"""gRPC `GetUserOrders` at 32 concurrent calls and `StreamOrderUpdates` throughput, each against a
bare grpc.aio server.

Both servers run in their own process (``python -m bench.grpc_orders KIND PORT DIR``) on the
event loop ``ordermesh up`` serves with (uvloop when installed) and with the same grpc options.
Ours is assembled like ``runner.serve_all`` minus HTTP: the order system on the embedded SQLite
database, started, and ``build_server`` with its interceptors (auth, deadlines, status mapping,
metrics, logging), health and reflection. The peer is a generated ``OrderServiceServicer``
subclass with no interceptors that answers with constant messages of the same size.

The load comes from this process over ``CHANNELS`` grpc.aio channels, with raw-bytes stubs (no
client-side parsing, so the client's cost is the same for both and the sizes are the wire sizes):

- unary: 32 coroutines call ``GetUserOrders`` (a user with 10 orders) in a loop for 5 s after a
  1 s warm-up; calls/s and p99 latency.
- stream: ``StreamOrderUpdates(user_id, after_position=0)`` for a user whose history is
  ``STREAM_EVENTS`` events; the time from the call to its last historical message (the call is
  then cancelled; ours would go on live). The peer yields two constant ``OrderUpdate``s built
  from a real order's (its OrderCreated and PaymentProcessed), as many of each as ours sends.

Two alternating rounds (ours, peer, ours, peer); the best of each side counts. Target >= 1.0x.
For diagnosis, ``python -m bench.grpc_orders chain PORT DIR/peer`` serves the peer's constant
handlers behind ``build_server``'s interceptors (see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import orjson

from bench.common import Figure, print_figures
from ordermesh.auth import Tokens
from ordermesh.config import Settings
from ordermesh.orders.v1 import orders_pb2 as pb
from ordermesh.orders.v1 import orders_pb2_grpc as pb_grpc
from ordermesh.services.orders.domain import OrderAggregate
from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.runtime import OrderSystem, build_order_system
from ordermesh.tuning import tune_gc

CONCURRENCY = 32
CHANNELS = 4
SECONDS = 5.0
WARMUP = 1.0
LIST_ORDERS = 10
STREAM_EVENTS = 3_000  # the stream user's history: orders created, then the first ones paid
STREAM_CREATED = 2_000
STREAM_REPEATS = 3  # streams per round; the best counts
ROUNDS = 2
LIST_USER = "bench-user"
STREAM_USER = "stream-user"
SERVICE = "/ordermesh.orders.v1.OrderService/"
# Separate TCP connections per channel (grpc otherwise shares one subchannel between them).
CLIENT_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
Metadata = tuple[tuple[str, str], ...]


# --- the servers (each in its own process) ----------------------------------------------------


async def _serve_ours(port: int, data_dir: str) -> None:
    from ordermesh.rpc.server import build_server
    from ordermesh.services.orders.app import create_order_app
    from ordermesh.services.orders.grpc_api import SERVICE_NAME, OrderGrpcService

    settings = Settings(data_dir=Path(data_dir))
    system = await build_order_system(settings.effective_database_url, snapshot_every=settings.snapshot_every)
    await system.start()
    app = create_order_app(settings, system)  # not served: it holds the tokens and the metrics
    orders_rpc = OrderGrpcService(system)
    server = build_server(
        registrations=[orders_rpc.register],
        service_names=[SERVICE_NAME],
        tokens=app.state.tokens,
        metrics=app.state.metrics.registry,
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


class _BareOrders(pb_grpc.OrderServiceServicer):
    """Constant answers; the other methods stay the generated UNIMPLEMENTED ones."""

    def __init__(self, data_dir: str) -> None:
        root = Path(data_dir)
        self.orders = pb.GetUserOrdersResponse.FromString((root / "list.bin").read_bytes())
        self.created = pb.OrderUpdate.FromString((root / "created.bin").read_bytes())
        self.paid = pb.OrderUpdate.FromString((root / "paid.bin").read_bytes())

    async def GetUserOrders(
        self, request: pb.GetUserOrdersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetUserOrdersResponse:
        return self.orders

    async def StreamOrderUpdates(
        self, request: pb.StreamRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.OrderUpdate]:
        for _ in range(STREAM_CREATED):
            yield self.created
        for _ in range(STREAM_EVENTS - STREAM_CREATED):
            yield self.paid


def _bare(data_dir: str) -> pb_grpc.OrderServiceServicer:
    return _BareOrders(data_dir)  # type: ignore[abstract]  # (stubs declare every method abstract)


async def _serve_bare(port: int, data_dir: str) -> None:
    from ordermesh.rpc.server import DEFAULT_OPTIONS  # the options `build_server` gives ours

    server = grpc.aio.server(options=DEFAULT_OPTIONS)
    pb_grpc.add_OrderServiceServicer_to_server(_bare(data_dir), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def _serve_chain(port: int, data_dir: str) -> None:
    """Diagnosis only (``python -m bench.grpc_orders chain PORT DIR``): the peer's constant
    handlers behind ``build_server``'s interceptors, to tell their cost from the handlers'."""
    from prometheus_client import CollectorRegistry

    from ordermesh.rpc.server import build_server

    server = build_server(
        registrations=[lambda s: pb_grpc.add_OrderServiceServicer_to_server(_bare(data_dir), s)],
        service_names=[pb.DESCRIPTOR.services_by_name["OrderService"].full_name],
        tokens=Tokens(Settings()),
        metrics=CollectorRegistry(),
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


_SERVERS = {"ours": _serve_ours, "bare": _serve_bare, "chain": _serve_chain}


def _serve(kind: str, port: int, data_dir: str) -> None:
    main = _SERVERS[kind](port, data_dir)
    try:  # the loop `ordermesh up` serves on (runner.run_system)
        import uvloop

        uvloop.run(main)
    except ImportError:
        asyncio.run(main)


# --- seeding ------------------------------------------------------------------------------------


async def _seed(data_dir: str) -> bytes:
    """The list user's 10 orders through the service (as `http_orders`), and the stream user's
    history. The latter is written by the same aggregate commands ``create_order`` and ``change``
    run, saved with ``repository.save``, and the read models are caught up once at the end:
    through the service every command catches them up inline, and rewriting the user's growing
    list per command makes seeding quadratic (1,000 orders: 11 s). Returns the list user's
    read-model body (the JSON the peer's constant response is built from)."""
    settings = Settings(data_dir=Path(data_dir))
    system = await build_order_system(settings.effective_database_url)
    try:
        for i in range(LIST_ORDERS):
            lines = [OrderLine(f"SKU-{i}", 1 + i % 3, 1250), OrderLine("SKU-X", 1, 99)]
            await system.service.create_order(LIST_USER, "bench@example.com", "EUR", lines)
        raw = await system.service.user_orders_json(LIST_USER, LIST_USER)
        await _seed_stream(system)
        return raw
    finally:
        await system.close()


async def _seed_stream(system: OrderSystem) -> None:
    service, repo = system.service, system.service.repository
    ids = []
    for i in range(STREAM_CREATED):
        lines = [OrderLine(f"SKU-{i % 50}", 1 + i % 3, 1250), OrderLine("SKU-X", 1, 99)]
        order = OrderAggregate.create(
            f"order-{i:06d}", STREAM_USER, "stream@example.com", "EUR", lines, service.clock.now()
        )
        await repo.save(order)
        ids.append(order.id)
    for i, order_id in enumerate(ids[: STREAM_EVENTS - STREAM_CREATED]):
        order = await repo.load(order_id)
        order.record_payment(f"pay-{i:06d}", order.total, "EUR", service.clock.now())
        await repo.save(order)
    for projector in system.projectors:
        await projector.catch_up()


async def _sample_updates(system: OrderSystem) -> tuple[pb.OrderUpdate, pb.OrderUpdate]:
    """The `OrderCreated` and `PaymentProcessed` updates of the stream user's first order, built
    as `grpc_api` builds them: the peer sends these, in the proportion of ours."""
    from ordermesh.services.orders.grpc_api import order_pb, timestamp

    repo = system.service.repository
    created, paid = await repo.store.read_stream(repo.stream_id("order-000000"))
    updates = []
    for event in (created, paid):
        order = (await repo.load("order-000000", version=event.version)).to_snapshot()
        update = pb.OrderUpdate(
            position=event.position,
            order_id=order["id"],
            version=event.version,
            event_type=event.type,
            occurred_at=timestamp(order["updated_at"]),
            data_json=orjson.dumps(repo.codec.upcast_data(event)[1]).decode(),
            order=order_pb(order),
        )
        updates.append(update)
    return updates[0], updates[1]


async def _write_peer_data(data_dir: str, raw_list: bytes) -> None:
    from ordermesh.services.orders.grpc_api import order_pb

    settings = Settings(data_dir=Path(data_dir))
    system = await build_order_system(settings.effective_database_url)
    try:
        created, paid = await _sample_updates(system)
    finally:
        await system.close()
    listing = pb.GetUserOrdersResponse(orders=[order_pb(d) for d in orjson.loads(raw_list)["orders"]])
    peer = Path(data_dir) / "peer"
    peer.mkdir()
    (peer / "list.bin").write_bytes(listing.SerializeToString())
    (peer / "created.bin").write_bytes(created.SerializeToString())
    (peer / "paid.bin").write_bytes(paid.SerializeToString())


# --- load ---------------------------------------------------------------------------------------


def _start(kind: str, port: int, data_dir: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bench.grpc_orders", kind, str(port), data_dir])


async def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


async def _unary(channels: list[grpc.aio.Channel], metadata: Metadata) -> tuple[float, float, int]:
    """Calls per second, p99 latency in ms and the response size, over SECONDS after a warm-up."""
    request = pb.GetUserOrdersRequest(user_id=LIST_USER).SerializeToString()
    calls: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]]
    calls = [c.unary_unary(SERVICE + "GetUserOrders") for c in channels]
    latencies: list[float] = []
    body = b""

    async def worker(n: int, until: float, record: bool) -> None:
        nonlocal body
        call = calls[n % len(calls)]
        while time.perf_counter() < until:
            start = time.perf_counter()
            answer = await call(request, metadata=metadata, timeout=10)
            if record:
                latencies.append(time.perf_counter() - start)
                body = answer

    warm = time.perf_counter() + WARMUP
    await asyncio.gather(*(worker(n, warm, False) for n in range(CONCURRENCY)))
    began = time.perf_counter()
    await asyncio.gather(*(worker(n, began + SECONDS, True) for n in range(CONCURRENCY)))
    elapsed = time.perf_counter() - began
    if len(pb.GetUserOrdersResponse.FromString(body).orders) != LIST_ORDERS:
        raise RuntimeError(f"GetUserOrders did not answer {LIST_ORDERS} orders")
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000
    return len(latencies) / elapsed, p99, len(body)


async def _stream(channel: grpc.aio.Channel, metadata: Metadata) -> tuple[float, float]:
    """Messages per second until the last historical message, and their mean size."""
    request = pb.StreamRequest(user_id=STREAM_USER, after_position=0).SerializeToString()
    stream: grpc.aio.UnaryStreamMultiCallable[bytes, bytes]
    stream = channel.unary_stream(SERVICE + "StreamOrderUpdates")
    best, total = 0.0, 0
    for _ in range(STREAM_REPEATS):
        received = total = 0
        start = time.perf_counter()
        call = stream(request, metadata=metadata, timeout=60)
        async for message in call:
            received += 1
            total += len(message)
            if received == STREAM_EVENTS:
                break
        elapsed = time.perf_counter() - start
        call.cancel()
        if received != STREAM_EVENTS:
            raise RuntimeError(f"stream ended after {received} of {STREAM_EVENTS} messages")
        best = max(best, STREAM_EVENTS / elapsed)
    return best, total / STREAM_EVENTS


async def _measure(kind: str, data_dir: str, tokens: tuple[str, str]) -> dict[str, Any]:
    from tests.helpers import free_port

    port = free_port()
    proc = _start(kind, port, data_dir)
    try:
        await _wait_listening(port, proc)
        channels = [
            grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CLIENT_OPTIONS) for _ in range(CHANNELS)
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), 15)
            rate, p99, size = await _unary(channels, (("authorization", f"Bearer {tokens[0]}"),))
            stream_auth = (("authorization", f"Bearer {tokens[1]}"),)
            messages, message_size = await _stream(channels[0], stream_auth)
        finally:
            for c in channels:
                await c.close()
        return {"rate": rate, "p99": p99, "size": size, "messages": messages, "message_size": message_size}
    finally:
        proc.terminate()
        proc.wait(10)


async def run() -> list[Figure]:
    with tempfile.TemporaryDirectory() as tmp:
        raw_list = await _seed(tmp)
        await _write_peer_data(tmp, raw_list)
        tokens = Tokens(Settings())
        pair = (tokens.issue(LIST_USER), tokens.issue(STREAM_USER))
        results: dict[str, list[dict[str, Any]]] = {"ours": [], "bare": []}
        for _ in range(ROUNDS):
            for kind, data_dir in (("ours", tmp), ("bare", os.path.join(tmp, "peer"))):
                results[kind].append(await _measure(kind, data_dir, pair))
    ours = {k: _best(results["ours"], k) for k in ("rate", "p99", "messages")}
    bare = {k: _best(results["bare"], k) for k in ("rate", "p99", "messages")}
    o, b = results["ours"][0], results["bare"][0]
    unary = f"GetUserOrders, {LIST_ORDERS} orders ({o['size']:,} B, peer {b['size']:,} B)"
    sizes = f"{o['message_size']:,.0f} B, peer {b['message_size']:,.0f} B avg"
    peer = "bare grpc.aio"
    figures = [
        Figure(f"{unary}: calls/s at {CONCURRENCY}", ours["rate"], bare["rate"], "calls/s", peer),
        Figure("GetUserOrders: p99 latency", ours["p99"], bare["p99"], "ms", peer),
        Figure(
            f"StreamOrderUpdates, {STREAM_EVENTS:,} updates ({sizes})",
            ours["messages"],
            bare["messages"],
            "msg/s",
            peer,
        ),
    ]
    print_figures(f"gRPC OrderService (best of {ROUNDS} rounds each; for latency lower is better)", figures)
    return figures


def _best(rounds: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in rounds]
    return float(min(values) if key == "p99" else max(values))


if __name__ == "__main__":
    tune_gc()  # both servers, as every ordermesh process runs (bench/__main__.py)
    _serve(sys.argv[1], int(sys.argv[2]), sys.argv[3])
