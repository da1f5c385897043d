"""Messaging: the outbox relay to RabbitMQ end to end, and the embedded (SQLite) broker.

1. End to end, durable, effectively once. Ours: N order events already in a SQLite event store;
   an ``OutboxRelay`` (batch 500) reads them, translates each into a ``Message`` (message id =
   event id), publishes to a topic exchange through ``RabbitBroker`` with publisher confirms
   (window 500) and moves its SQLite checkpoint; a subscription (prefetch 500) runs a handler that
   records the message id in a ``SqlInbox`` (its own SQLite file, one transaction per message)
   and the broker acks after it returns. Timed from relay start until the consumer handled all N.
   Peer: raw aio-pika on the same server: N persistent messages of the same body published with
   publisher confirms, at most 500 in flight, to a durable topic exchange and queue; a consumer
   (prefetch 500) acks each message by hand. No store, no checkpoint, no inbox, no headers.
   Second peer: the same raw aio-pika publisher, consumed by a FastStream subscriber (its
   RabbitBroker, channel prefetch 500, ``AckPolicy.ACK``: ack after the handler, a ``dict``
   body as its docs write handlers, logging off so it is not slowed by its per-message log
   lines). No inbox there either.
2. The consumer alone: N messages (same bodies) already in a durable queue, published by the raw
   aio-pika publisher; timed from subscribing until all are handled and acked. Ours:
   ``RabbitBroker.subscribe`` (prefetch 500) with the ``SqlInbox`` as above. Peers: the raw
   aio-pika consumer (ack by hand) and the FastStream subscriber, both without an inbox.
3. The embedded broker (``EmbeddedBroker``, a SQLite file): N messages published one per
   ``publish`` call and in batches of 50, one subscription with prefetch 64; throughput from the
   first publish to the last handled message, and p99 publish→handle latency. For scale the same
   workload runs once through ``RabbitBroker`` (the "peer" column: a server, not a file).
4. The fast path against aiormq's stock path (``fast_path=False``: what aiormq and pamqp
   versions the fast path was not verified on get), ``RabbitBroker`` on both sides: publish
   alone (N messages in batches of 500 handed over at once, confirm window 500, into a bound
   queue nobody consumes; timed until the last confirm), then the consumer alone on the queue
   that filled (prefetch 500, the ``SqlInbox`` as above; timed from subscribing until all are
   handled), and end to end as in 1. The "ours" column is the fast path, "peer" the stock one.

Each side runs twice, alternating; the best round of each counts. Names carry a unique prefix
and the RabbitMQ topology is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import orjson
from faststream import AckPolicy
from faststream.rabbit import Channel, ExchangeType, RabbitExchange, RabbitQueue
from faststream.rabbit import RabbitBroker as FastStreamBroker

from bench.common import Figure, event_data, print_figures
from ordermesh.db import connect
from ordermesh.eventstore import NewEvent, SqlEventStore
from ordermesh.eventstore.model import StoredEvent
from ordermesh.eventstore.subscription import SqlCheckpoints
from ordermesh.messaging.embedded import EmbeddedBroker
from ordermesh.messaging.inbox import SqlInbox
from ordermesh.messaging.port import Broker, Delivery, Message
from ordermesh.messaging.rabbitmq import RabbitBroker
from ordermesh.messaging.relay import OutboxRelay

AMQP_URL = os.environ.get("ORDERMESH_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
N = 5_000
WINDOW = 500  # relay batch, confirm window and consumer prefetch of the end-to-end case
EMBEDDED_PREFETCH = 64
EMBEDDED_BATCH = 50
ROUNDS = 2
TIMEOUT = 30.0  # per measured run: a stuck run fails instead of hanging


def amqp_url() -> str:
    host = urlsplit(AMQP_URL).hostname
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise SystemExit(f"benchmarks only talk to 127.0.0.1, not {host!r} (ORDERMESH_BENCH_AMQP_URL)")
    return AMQP_URL


def _prefix() -> str:
    return f"bench-msg-{uuid.uuid4().hex[:10]}."


# ------------------------------------------------------------------------- 1. end to end, ours


async def _translate(event: StoredEvent) -> Message | None:
    return Message(
        routing_key="order.created",
        body=orjson.dumps(event.data),
        type="order.created",
        message_id=event.event_id,
        occurred_at=event.occurred_at,
        correlation_id=event.stream_id,
        causation_id=event.event_id,
    )


async def _seed_store(path: str) -> SqlEventStore:
    store = await SqlEventStore.open(await connect(f"sqlite:///{path}"))

    async def writer(w: int) -> None:
        for i in range(w, N, 8):
            await store.append(f"order-{i:08d}", [NewEvent("OrderCreated", event_data(i))], 0)

    await asyncio.gather(*(writer(w) for w in range(8)))
    return store


async def _open(prefix: str, *, fast: bool = True) -> RabbitBroker:
    broker = await RabbitBroker.open(amqp_url(), prefix=prefix, confirm_window=WINDOW, fast_path=fast)
    if broker.fast_path is not fast:
        await broker.close()
        raise SystemExit("the RabbitMQ fast path is not verified on the installed aiormq/pamqp (fastpath.py)")
    return broker


async def _ours_e2e(tmp: str, fast: bool = True) -> float:
    tag = uuid.uuid4().hex[:8]
    store = await _seed_store(os.path.join(tmp, f"events-{tag}.db"))
    inbox_db = await connect(f"sqlite:///{os.path.join(tmp, f'inbox-{tag}.db')}")
    inbox = await SqlInbox.open(inbox_db, "bench")
    checkpoints = await SqlCheckpoints.open(store.db)
    broker = await _open(_prefix(), fast=fast)
    try:
        handle, done = _through_inbox(inbox)
        await broker.subscribe("bench.orders", "orders", ["order.*"], handle, prefetch=WINDOW)
        relay = OutboxRelay(store, checkpoints, broker, "orders", _translate, name="bench", batch=WINDOW)
        stop = asyncio.Event()
        start = time.perf_counter()
        task = asyncio.create_task(relay.run(stop, idle_timeout=0.05))
        try:
            await asyncio.wait_for(done.wait(), TIMEOUT)
            elapsed = time.perf_counter() - start
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        if relay.failures:
            raise RuntimeError(f"relay failed {relay.failures} times: {relay.last_error}")
        return N / elapsed
    finally:
        await broker.delete_topology()
        await broker.close()
        await inbox_db.close()
        await store.close()


# ------------------------------------------------------------------------- 1. end to end, peer


async def _raw_publish(exchange: aio_pika.abc.AbstractExchange, bodies: list[bytes]) -> None:
    """N persistent messages, publisher confirms, at most WINDOW in flight."""
    window = asyncio.Semaphore(WINDOW)

    async def publish_one(body: bytes) -> None:
        try:
            await exchange.publish(
                aio_pika.Message(
                    body,
                    message_id=str(uuid.uuid4()),
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key="order.created",
                mandatory=True,
            )
        finally:
            window.release()

    tasks = []
    for body in bodies:
        await window.acquire()
        tasks.append(asyncio.create_task(publish_one(body)))
    await asyncio.gather(*tasks)


async def _peer_e2e() -> float:
    prefix = _prefix()
    bodies = [orjson.dumps(event_data(i)) for i in range(N)]
    connection = await aio_pika.connect(amqp_url(), timeout=5)
    try:
        pub = await connection.channel(publisher_confirms=True)
        exchange = await pub.declare_exchange(f"{prefix}orders", aio_pika.ExchangeType.TOPIC, durable=True)
        sub = await connection.channel()
        await sub.set_qos(prefetch_count=WINDOW)
        queue = await sub.declare_queue(f"{prefix}bench.orders", durable=True)
        await queue.bind(f"{prefix}orders", routing_key="order.*")
        handled = 0
        done = asyncio.Event()

        async def on_message(incoming: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal handled
            await incoming.ack()
            handled += 1
            if handled == N:
                done.set()

        tag = await queue.consume(on_message)
        start = time.perf_counter()
        await _raw_publish(exchange, bodies)
        await asyncio.wait_for(done.wait(), TIMEOUT)
        elapsed = time.perf_counter() - start
        await queue.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()
        return N / elapsed
    finally:
        await connection.close()


async def _faststream_e2e() -> float:
    prefix = _prefix()
    bodies = [orjson.dumps(event_data(i)) for i in range(N)]
    handled = 0
    done = asyncio.Event()
    fs = FastStreamBroker(amqp_url(), logger=None)

    @fs.subscriber(
        RabbitQueue(f"{prefix}bench.orders", durable=True, routing_key="order.*"),
        RabbitExchange(f"{prefix}orders", type=ExchangeType.TOPIC, durable=True),
        channel=Channel(prefetch_count=WINDOW),
        ack_policy=AckPolicy.ACK,
    )
    async def handle(body: dict[str, Any]) -> None:
        nonlocal handled
        handled += 1
        if handled == N:
            done.set()

    await fs.start()
    connection = await aio_pika.connect(amqp_url(), timeout=5)
    try:
        pub = await connection.channel(publisher_confirms=True)
        exchange = await pub.get_exchange(f"{prefix}orders")
        start = time.perf_counter()
        await _raw_publish(exchange, bodies)
        await asyncio.wait_for(done.wait(), TIMEOUT)
        elapsed = time.perf_counter() - start
        await fs.stop()
        await pub.queue_delete(f"{prefix}bench.orders")
        await pub.exchange_delete(f"{prefix}orders")
        return N / elapsed
    finally:
        await connection.close()


# ------------------------------------------------------------------- 2. the consumer alone


async def _filled_queue(prefix: str, queue: str) -> None:
    """A durable queue bound to a topic exchange, holding N persistent messages."""
    connection = await aio_pika.connect(amqp_url(), timeout=5)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            f"{prefix}orders", aio_pika.ExchangeType.TOPIC, durable=True
        )
        declared = await channel.declare_queue(f"{prefix}{queue}", durable=True)
        await declared.bind(exchange, routing_key="order.*")
        await _raw_publish(exchange, [orjson.dumps(event_data(i)) for i in range(N)])
    finally:
        await connection.close()


async def _drop(prefix: str, queue: str) -> None:
    connection = await aio_pika.connect(amqp_url(), timeout=5)
    try:
        channel = await connection.channel()
        await channel.queue_delete(f"{prefix}{queue}")
        await channel.exchange_delete(f"{prefix}orders")
    finally:
        await connection.close()


async def _ours_consume(tmp: str) -> float:
    prefix = _prefix()
    broker = await _open(prefix)
    inbox_db = await connect(f"sqlite:///{os.path.join(tmp, f'inbox-{uuid.uuid4().hex[:8]}.db')}")
    try:
        inbox = await SqlInbox.open(inbox_db, "bench")
        parked = await broker.subscribe("bench.orders", "orders", ["order.*"], _ignore)
        await parked.stop()  # declared with its retry and dead-letter queues; now fill it
        await _filled_queue(prefix, "bench.orders")
        return await _consume_through(inbox, broker)
    finally:
        await broker.delete_topology()
        await broker.close()
        await inbox_db.close()


async def _ignore(delivery: Delivery) -> None:
    return None


async def _aio_pika_consume() -> float:
    prefix = _prefix()
    await _filled_queue(prefix, "bench.orders")
    connection = await aio_pika.connect(amqp_url(), timeout=5)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=WINDOW)
        queue = await channel.declare_queue(f"{prefix}bench.orders", durable=True)
        handled = 0
        done = asyncio.Event()

        async def on_message(incoming: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal handled
            await incoming.ack()
            handled += 1
            if handled == N:
                done.set()

        start = time.perf_counter()
        tag = await queue.consume(on_message)
        await asyncio.wait_for(done.wait(), TIMEOUT)
        elapsed = time.perf_counter() - start
        await queue.cancel(tag)
        return N / elapsed
    finally:
        await connection.close()
        await _drop(prefix, "bench.orders")


async def _faststream_consume() -> float:
    prefix = _prefix()
    await _filled_queue(prefix, "bench.orders")
    handled = 0
    done = asyncio.Event()
    fs = FastStreamBroker(amqp_url(), logger=None)

    @fs.subscriber(
        RabbitQueue(f"{prefix}bench.orders", durable=True, routing_key="order.*"),
        RabbitExchange(f"{prefix}orders", type=ExchangeType.TOPIC, durable=True),
        channel=Channel(prefetch_count=WINDOW),
        ack_policy=AckPolicy.ACK,
    )
    async def handle(body: dict[str, Any]) -> None:
        nonlocal handled
        handled += 1
        if handled == N:
            done.set()

    try:
        start = time.perf_counter()
        await fs.start()
        await asyncio.wait_for(done.wait(), TIMEOUT)
        return N / (time.perf_counter() - start)
    finally:
        await fs.stop()
        await _drop(prefix, "bench.orders")


# --------------------------------------------------------------------- 3. publish → handle


async def _publish_handle(broker: Broker, batch: int) -> tuple[float, float]:
    """Messages per second and p99 publish→handle latency in ms."""
    sent: dict[str, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()

    async def handle(delivery: Delivery) -> None:
        latencies.append(time.perf_counter() - sent[delivery.message.message_id])
        if len(latencies) == N:
            done.set()

    exchange = "bench-events"
    await broker.declare_exchange(exchange)
    await broker.subscribe("bench.events", exchange, ["event.#"], handle, prefetch=EMBEDDED_PREFETCH)
    messages = [Message("event.created", orjson.dumps(event_data(i)), type="event.created") for i in range(N)]
    start = time.perf_counter()
    for i in range(0, N, batch):
        chunk = messages[i : i + batch]
        now = time.perf_counter()
        for m in chunk:
            sent[m.message_id] = now
        await broker.publish(exchange, chunk)
    await asyncio.wait_for(done.wait(), TIMEOUT)
    elapsed = time.perf_counter() - start
    return N / elapsed, statistics.quantiles(latencies, n=100)[98] * 1000


async def _embedded(tmp: str, batch: int) -> tuple[float, float]:
    broker = await EmbeddedBroker.open(os.path.join(tmp, f"mq-{uuid.uuid4().hex[:8]}.db"))
    try:
        return await _publish_handle(broker, batch)
    finally:
        await broker.delete_topology()
        await broker.close()


async def _rabbit(batch: int) -> tuple[float, float]:
    broker = await _open(_prefix())
    try:
        return await _publish_handle(broker, batch)
    finally:
        await broker.delete_topology()
        await broker.close()


# ----------------------------------------------------------- 4. fast path vs aiormq's stock path


async def _wire(tmp: str, fast: bool) -> tuple[float, float]:
    """Publish alone, then consume alone, on one wire: (published, consumed) msg/s."""
    broker = await _open(_prefix(), fast=fast)
    inbox_db = await connect(f"sqlite:///{os.path.join(tmp, f'inbox-{uuid.uuid4().hex[:8]}.db')}")
    try:
        inbox = await SqlInbox.open(inbox_db, "bench")
        parked = await broker.subscribe("bench.orders", "orders", ["order.*"], _ignore)
        await parked.stop()  # declared and bound, nobody consuming: the publishes pile up in it
        messages = [
            Message(
                "order.created",
                orjson.dumps(event_data(i)),
                type="order.created",
                correlation_id=f"order-{i:08d}",
                causation_id=f"event-{i:08d}",
            )
            for i in range(N)
        ]
        start = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(
                *(broker.publish("orders", messages[i : i + WINDOW]) for i in range(0, N, WINDOW))
            ),
            TIMEOUT,
        )
        published = N / (time.perf_counter() - start)
        return published, await _consume_through(inbox, broker)
    finally:
        await broker.delete_topology()
        await broker.close()
        await inbox_db.close()


async def _wires(tmp: str) -> list[Figure]:
    runs: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    for _ in range(ROUNDS):  # alternating, as everywhere here
        for fast in (True, False):
            published, consumed = await _wire(tmp, fast)
            runs[fast].append((published, consumed, await _ours_e2e(tmp, fast)))
    cases = ("publish alone, confirms", "consumer alone + SQLite inbox", "outbox→RabbitMQ→inbox")
    figures = [
        Figure(
            f"{case}, {N:,} msgs",
            max(r[n] for r in runs[True]),
            max(r[n] for r in runs[False]),
            "msg/s",
            "stock aiormq path",
        )
        for n, case in enumerate(cases)
    ]
    print_figures(f"RabbitBroker, fast path vs aiormq's stock path (best of {ROUNDS} rounds each)", figures)
    return figures


# ------------------------------------------------------------------------------------- run


async def _best(
    ours: Callable[[], Awaitable[float]], peer: Callable[[], Awaitable[float]]
) -> tuple[float, float]:
    a: list[float] = []
    b: list[float] = []
    for _ in range(ROUNDS):
        a.append(await ours())
        b.append(await peer())
    return max(a), max(b)


async def run() -> list[Figure]:
    with tempfile.TemporaryDirectory() as tmp:
        runs: dict[str, list[float]] = {"ours": [], "aio-pika": [], "faststream": []}
        for _ in range(ROUNDS):  # alternating, so drift on a noisy machine hits every side
            runs["ours"].append(await _ours_e2e(tmp))
            runs["aio-pika"].append(await _peer_e2e())
            runs["faststream"].append(await _faststream_e2e())
        ours = max(runs["ours"])
        label = f"outbox→RabbitMQ→inbox, {N:,} msgs"
        figures = [
            Figure(label, ours, max(runs["aio-pika"]), "msg/s", "raw aio-pika, confirms+acks"),
            Figure(label, ours, max(runs["faststream"]), "msg/s", "aio-pika → FastStream consumer"),
        ]
        print_figures(f"Messaging end to end, durable (best of {ROUNDS} rounds each)", figures)

        consume: dict[str, list[float]] = {"ours": [], "aio-pika": [], "faststream": []}
        for _ in range(ROUNDS):
            consume["ours"].append(await _ours_consume(tmp))
            consume["aio-pika"].append(await _aio_pika_consume())
            consume["faststream"].append(await _faststream_consume())
        label = f"consumer + SQLite inbox, {N:,} msgs"
        consumer = [
            Figure(label, max(consume["ours"]), max(consume["aio-pika"]), "msg/s", "raw aio-pika consumer"),
            Figure(label, max(consume["ours"]), max(consume["faststream"]), "msg/s", "FastStream consumer"),
        ]
        print_figures(f"The consumer alone, queue filled first (best of {ROUNDS} rounds each)", consumer)
        figures += consumer

        embedded: list[Figure] = []
        for batch in (1, EMBEDDED_BATCH):
            runs_e: list[tuple[float, float]] = []
            runs_r: list[tuple[float, float]] = []
            for r in range(ROUNDS):
                runs_e.append(await _embedded(tmp, batch))
                if r == 0:  # a reference for scale, not a target: one round keeps the run short
                    runs_r.append(await _rabbit(batch))
            label = "1 per publish" if batch == 1 else f"batches of {batch}"
            embedded += [
                Figure(
                    f"embedded, {label}: throughput",
                    max(r[0] for r in runs_e),
                    max(r[0] for r in runs_r),
                    "msg/s",
                    "RabbitBroker",
                ),
                Figure(
                    f"embedded, {label}: p99 latency",
                    min(r[1] for r in runs_e),
                    min(r[1] for r in runs_r),
                    "ms",
                    "RabbitBroker",
                ),
            ]
        print_figures(
            f"Embedded broker, {N:,} msgs, prefetch {EMBEDDED_PREFETCH} "
            "(best of 2, RabbitBroker 1 round; latency: lower is better)",
            embedded,
        )
        wires = await _wires(tmp)
    return figures + embedded + wires


def _through_inbox(inbox: SqlInbox) -> tuple[Callable[[Delivery], Awaitable[None]], asyncio.Event]:
    """A handler recording each message once in ``inbox``, and the event it sets at the N-th."""
    handled = 0
    done = asyncio.Event()

    async def effect(tx: object) -> None:
        return None

    async def handle(delivery: Delivery) -> None:
        nonlocal handled
        if await inbox.once(delivery.message.message_id, effect):
            handled += 1
            if handled == N:
                done.set()

    return handle, done


async def _consume_through(inbox: SqlInbox, broker: Any) -> float:
    """Messages/s of ``bench.orders``'s N messages consumed, each recorded once in ``inbox``."""
    handle, done = _through_inbox(inbox)
    start = time.perf_counter()
    await broker.subscribe("bench.orders", "orders", ["order.*"], handle, prefetch=WINDOW)
    await asyncio.wait_for(done.wait(), TIMEOUT)
    return N / (time.perf_counter() - start)
