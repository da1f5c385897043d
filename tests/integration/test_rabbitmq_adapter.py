"""The RabbitMQ adapter against a real RabbitMQ: what the shared contract cannot see (legacy
publishers, AMQP properties, topology arguments, prefetch, quorum queues, a dropped connection).

Every test that talks to the server runs on both wires (``fast``: the fast path; ``stock``:
aiormq's own path, what unverified aiormq/pamqp versions get). Outside CI a missing RabbitMQ
(or a fast path not verified on the installed versions) skips; under CI=true it fails.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aio_pika
import aiormq
import pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from ordermesh.errors import NotFound
from ordermesh.messaging import open_broker
from ordermesh.messaging.port import (
    H_ATTEMPT,
    H_DEAD_AT,
    H_ERROR,
    H_ORIGINAL_EXCHANGE,
    H_ORIGINAL_ROUTING_KEY,
    H_SCHEMA,
    BrokerUnavailable,
    Delivery,
    Message,
    PermanentError,
    Unroutable,
)
from ordermesh.messaging.rabbitmq import RabbitBroker, derived_message_id, fastpath
from tests.helpers import (
    AMQP_URL,
    FAST,
    TIMEOUT,
    Collector,
    amqp_prefix,
    dead_letters,
    eventually,
    require_fast_path,
    require_rabbitmq,
    scaled,
    within,
)

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def amqp_url() -> str:
    """The server URL; a missing server skips outside CI and fails under CI=true."""
    require_rabbitmq()
    return AMQP_URL


@pytest.fixture
def prefix() -> str:
    return amqp_prefix()


@pytest.fixture(params=["fast", "stock"])
def fast(request: pytest.FixtureRequest) -> bool:
    """The wire: True for the fast path, False for aiormq's stock path."""
    if request.param == "stock":
        return False
    require_fast_path()
    return True


@pytest.fixture
async def broker(amqp_url: str, prefix: str, fast: bool) -> AsyncIterator[RabbitBroker]:
    b = await RabbitBroker.open(amqp_url, prefix=prefix, fast_path=fast)
    assert b.fast_path is fast
    await b.declare_exchange("orders")
    yield b
    await b.delete_topology()
    await b.close()


@pytest.fixture
async def raw(amqp_url: str) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    """A plain aio-pika connection, to look at what the adapter left on the broker."""
    connection = await aio_pika.connect(amqp_url)
    yield connection
    await connection.close()


async def ready_count(connection: aio_pika.abc.AbstractConnection, queue: str) -> int:
    """Messages ready (not unacknowledged) in ``queue``, from a passive declare."""
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count
        return int(count or 0)
    finally:
        await channel.close()


async def ready_reaches(connection: aio_pika.abc.AbstractConnection, queue: str, count: int) -> None:
    """Until ``queue`` holds ``count`` ready messages (a queue's depth has no notification)."""

    async def depth_reached() -> bool:
        return await ready_count(connection, queue) == count

    await eventually(depth_reached, what=f"{count} ready in {queue}", interval=0.02)


async def get_raw(connection: aio_pika.abc.AbstractConnection, queue: str) -> AbstractIncomingMessage:
    """Take one message off ``queue`` (acknowledged) to inspect its AMQP properties."""
    channel = await connection.channel()
    try:
        q = await channel.declare_queue(queue, passive=True)
        message = await q.get(no_ack=True, timeout=scaled(TIMEOUT))
        assert message is not None
        return message
    finally:
        await channel.close()


def legacy_publish(url: str, exchange: str, routing_key: str, body: bytes, **properties: Any) -> None:
    """What an old service does: pika, blocking, no envelope at all."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
        props = pika.BasicProperties(**properties) if properties else None
        channel.basic_publish(exchange=exchange, routing_key=routing_key, body=body, properties=props)
    finally:
        connection.close()


async def test_open_fails_clearly_when_rabbitmq_is_down() -> None:
    with pytest.raises(BrokerUnavailable) as caught:
        await RabbitBroker.open("amqp://guest:secret@127.0.0.1:1/")
    assert "rabbitmq-server -detached" in str(caught.value)
    assert "secret" not in str(caught.value)


async def test_a_plain_pika_publish_is_consumed(broker: RabbitBroker, amqp_url: str, prefix: str) -> None:
    inbox = Collector()
    await broker.subscribe("notifications.order_created", "orders", ["order.created"], inbox)
    order = {"id": "o-1", "user_email": "a@example.com", "total": "12.50"}
    body = json.dumps(order).encode()
    await asyncio.to_thread(legacy_publish, amqp_url, f"{prefix}orders", "order.created", body)

    (got,) = await inbox.wait_for(1)
    m = got.message
    assert m.payload() == order
    assert (m.routing_key, m.type, m.schema_version) == ("order.created", "order.created", 1)
    # no message_id on the wire: a stable one derived from routing key and body
    assert m.message_id == derived_message_id("order.created", body)
    assert (m.correlation_id, m.causation_id, dict(m.headers)) == (None, None, {})
    assert (got.exchange, got.queue, got.attempt, got.redelivered) == (
        "orders",
        "notifications.order_created",
        1,
        False,
    )


async def test_legacy_properties_are_used_when_present(
    broker: RabbitBroker, amqp_url: str, prefix: str
) -> None:
    inbox = Collector()
    await broker.subscribe("q.props", "orders", ["order.*"], inbox)
    props = {
        "message_id": "legacy-1",
        "type": "OrderPaid",
        "correlation_id": "c-9",
        "timestamp": 1_700_000_000,
        "headers": {"traceparent": "00-abc-def-01"},
    }
    await asyncio.to_thread(legacy_publish, amqp_url, f"{prefix}orders", "order.paid", b"{}", **props)
    (got,) = await inbox.wait_for(1)
    m = got.message
    assert (m.message_id, m.type, m.correlation_id) == ("legacy-1", "OrderPaid", "c-9")
    assert m.occurred_at.timestamp() == 1_700_000_000 and m.occurred_at.tzinfo is not None
    assert m.headers == {"traceparent": "00-abc-def-01"}


async def test_messages_are_persistent_with_the_envelope_in_properties(
    broker: RabbitBroker, raw: aio_pika.abc.AbstractConnection, prefix: str
) -> None:
    sub = await broker.subscribe("q.persist", "orders", ["order.created"], Collector())
    await sub.stop()  # the queue stays, bound, with nobody consuming: look at what lands in it
    sent = Message.json(
        "order.created",
        {"id": "o-2"},
        correlation_id="c-1",
        causation_id="k-1",
        headers={"traceparent": "00-x"},
    )
    await broker.publish("orders", [sent])
    got = await get_raw(raw, f"{prefix}q.persist")
    assert got.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert (got.content_type, got.message_id, got.type, got.correlation_id) == (
        "application/json",
        sent.message_id,
        "order.created",
        "c-1",
    )
    assert json.loads(got.body) == {"id": "o-2"}  # plain JSON: no envelope in the body
    headers = got.headers
    assert headers[H_SCHEMA] == 1 and headers["traceparent"] == "00-x"
    assert headers["x-ordermesh-causation-id"] == "k-1"
    assert datetime.fromisoformat(str(headers["x-ordermesh-occurred-at"])) == sent.occurred_at

    # durable exchange and queue: redeclaring them transient is refused by the broker
    channel = await raw.channel()
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
        await channel.declare_queue(f"{prefix}q.persist", durable=False)
    channel = await raw.channel()
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
        await channel.declare_exchange(f"{prefix}orders", aio_pika.ExchangeType.TOPIC, durable=False)


async def test_unroutable_publishes_raise(broker: RabbitBroker) -> None:
    inbox = Collector()
    await broker.subscribe("q.paid", "orders", ["order.paid"], inbox)
    with pytest.raises(Unroutable, match=r"order\.created"):
        await broker.publish(
            "orders", [Message.json("order.paid", {"n": 1}), Message.json("order.created", {"n": 2})]
        )
    assert [d.message.payload() for d in await inbox.wait_for(1)] == [{"n": 1}]
    with pytest.raises(Unroutable, match="does not exist"):
        await broker.publish("nowhere", [Message.json("order.paid", {})])
    await broker.publish("orders", [Message.json("order.paid", {"n": 3})])  # the channel survived
    await inbox.wait_for(2)


async def test_pipelined_publishing_keeps_order(amqp_url: str, prefix: str, fast: bool) -> None:
    broker = await RabbitBroker.open(amqp_url, prefix=prefix, confirm_window=50, fast_path=fast)
    try:
        inbox = Collector()
        await broker.subscribe("q.order", "orders", ["#"], inbox, prefetch=1)
        await broker.publish("orders", [Message.json("order.created", {"n": i}) for i in range(500)])
        assert [d.message.payload()["n"] for d in await inbox.wait_for(500)] == list(range(500))
    finally:
        await broker.delete_topology()
        await broker.close()


async def test_a_message_id_in_flight_twice_is_returned_for_the_right_publish(broker: RabbitBroker) -> None:
    # aiormq maps a returned message to its publish by message id: the second publish of an id
    # waits for the first's confirm, so the return names the publish that was unroutable.
    inbox = Collector()
    await broker.subscribe("q.paid", "orders", ["order.paid"], inbox)
    twice = [  # unroutable first: its return must not be taken for the later publish's
        Message.json("order.nowhere", {"n": 2}, message_id="same-id"),
        Message.json("order.paid", {"n": 1}, message_id="same-id"),
    ]
    with pytest.raises(Unroutable, match=r"1 of 2 .*order\.nowhere"):
        await broker.publish("orders", twice)
    assert [d.message.payload() for d in await inbox.wait_for(1)] == [{"n": 1}]


async def test_a_body_larger_than_a_frame_arrives_whole(broker: RabbitBroker) -> None:
    inbox = Collector()
    await broker.subscribe("q.big", "orders", ["order.created"], inbox)
    big = {"items": ["x" * 1000 for _ in range(400)]}  # ~400 kB: several body frames each way
    await broker.publish("orders", [Message.json("order.created", big), Message.json("order.created", {})])
    got = await inbox.wait_for(2)
    assert [d.message.payload() for d in got] == [big, {}]


async def test_retries_wait_in_delay_queues_then_dead_letter_with_headers(
    broker: RabbitBroker, raw: aio_pika.abc.AbstractConnection, prefix: str
) -> None:
    def always(d: Delivery) -> None:
        raise RuntimeError(f"smtp down ({d.attempt})")

    inbox = Collector(always)
    await broker.subscribe("q.retry", "orders", ["order.created"], inbox, retry=FAST)
    sent = Message.json("order.created", {"id": "r-1"}, headers={"traceparent": "00-t"})
    await broker.publish("orders", [sent])
    await ready_reaches(raw, f"{prefix}q.retry.dlq", 1)

    assert [d.attempt for d in inbox.got] == [1, 2, 3]
    assert all(d.exchange == "orders" and d.message.routing_key == "order.created" for d in inbox.got)
    assert all(d.message.message_id == sent.message_id for d in inbox.got)
    assert all(d.message.headers.get("traceparent") == "00-t" for d in inbox.got)
    gaps = [b - a for a, b in zip(inbox.at, inbox.at[1:], strict=False)]
    assert gaps[0] >= 0.045 and gaps[1] >= 0.095  # 50 ms, then 100 ms in the delay queues

    (letter,) = await broker.dead_letters("q.retry")
    assert (letter.id, letter.attempts, letter.error) == (sent.message_id, 3, "RuntimeError: smtp down (3)")
    assert (letter.original_exchange, letter.original_routing_key) == ("orders", "order.created")
    assert letter.message.payload() == {"id": "r-1"} and letter.message.headers.get("traceparent") == "00-t"

    got = await get_raw(raw, f"{prefix}q.retry.dlq")
    assert got.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert got.headers[H_ATTEMPT] == 3 and got.headers[H_ERROR] == "RuntimeError: smtp down (3)"
    assert (got.headers[H_ORIGINAL_EXCHANGE], got.headers[H_ORIGINAL_ROUTING_KEY]) == (
        "orders",
        "order.created",
    )
    datetime.fromisoformat(str(got.headers[H_DEAD_AT]))
    assert not any(str(name).startswith("x-death") for name in got.headers)
    for delay_queue in ("q.retry.retry.50", "q.retry.retry.100"):
        assert await ready_count(raw, f"{prefix}{delay_queue}") == 0


async def test_permanent_error_dead_letters_at_once(broker: RabbitBroker) -> None:
    def unknown(d: Delivery) -> None:
        raise PermanentError("unknown message type 'order.exploded'")

    inbox = Collector(unknown)
    await broker.subscribe("q.perm", "orders", ["order.#"], inbox, retry=FAST)
    await broker.publish("orders", [Message.json("order.exploded", {})])
    letters = await dead_letters(broker, "q.perm", 1)
    assert letters[0].attempts == 1 and len(inbox.got) == 1
    assert letters[0].error == "PermanentError: unknown message type 'order.exploded'"


async def test_a_malformed_envelope_is_dead_lettered_without_calling_the_handler(
    broker: RabbitBroker, amqp_url: str, prefix: str
) -> None:
    inbox = Collector()
    await broker.subscribe("q.bad", "orders", ["order.created"], inbox)
    headers = {H_SCHEMA: "two", H_ATTEMPT: "x"}
    await asyncio.to_thread(
        legacy_publish, amqp_url, f"{prefix}orders", "order.created", b'{"id": 1}', headers=headers
    )
    (letter,) = await dead_letters(broker, "q.bad", 1)
    assert letter.error.startswith("malformed envelope:") and letter.attempts == 1
    assert letter.message.payload() == {"id": 1} and inbox.got == []


@pytest.mark.parametrize("quorum", [False, True], ids=["classic", "quorum"])
async def test_reading_dead_letters_neither_loses_nor_reorders_them(
    amqp_url: str, prefix: str, quorum: bool, fast: bool
) -> None:
    def reject(d: Delivery) -> None:
        raise PermanentError("no")

    broker = await RabbitBroker.open(amqp_url, prefix=prefix, quorum=quorum, fast_path=fast)
    try:
        await broker.subscribe("q.many", "orders", ["order.created"], Collector(reject), prefetch=1)
        sent = [Message.json("order.created", {"n": i}) for i in range(8)]
        await broker.publish("orders", sent)
        first = await dead_letters(broker, "q.many", 8)  # reads while letters are still arriving
        again = await broker.dead_letters("q.many")
        everywhere = await broker.dead_letters()
        assert [d.id for d in first] == [d.id for d in again] == [m.message_id for m in sent]
        assert [d.id for d in everywhere] == [m.message_id for m in sent]
    finally:
        await broker.delete_topology()
        await broker.close()


async def test_replay_sends_a_dead_letter_back_to_its_queue_as_a_first_attempt(
    broker: RabbitBroker, raw: aio_pika.abc.AbstractConnection, prefix: str
) -> None:
    broken = {"yes": True}

    def handler(d: Delivery) -> None:
        if broken["yes"]:
            raise PermanentError("bug")

    inbox = Collector(handler)
    other = Collector()
    await broker.subscribe("q.replay", "orders", ["order.created"], inbox, retry=FAST)
    await broker.subscribe("q.other", "orders", ["order.created"], other)
    keep = Message.json("order.created", {"id": "keep"})
    fix = Message.json("order.created", {"id": "fix"})
    await broker.publish("orders", [keep, fix])
    await dead_letters(broker, "q.replay", 2)
    await other.wait_for(2)

    broken["yes"] = False
    await broker.replay("q.replay", fix.message_id)
    replayed = (await inbox.wait_for(3))[-1]
    assert (replayed.message.message_id, replayed.attempt, replayed.exchange) == (fix.message_id, 1, "orders")
    assert replayed.message.routing_key == "order.created" and replayed.message.payload() == {"id": "fix"}
    assert [d.id for d in await broker.dead_letters("q.replay")] == [keep.message_id]
    assert len(other.got) == 2  # only the queue it died in gets it again
    with pytest.raises(NotFound):
        await broker.replay("q.replay", fix.message_id)
    assert [d.id for d in await broker.dead_letters("q.replay")] == [keep.message_id]


async def test_prefetch_bounds_the_handlers_in_flight(
    broker: RabbitBroker, raw: aio_pika.abc.AbstractConnection, prefix: str
) -> None:
    release = asyncio.Event()
    running = 0
    peak = 0
    done: list[int] = []
    three_in, all_done = asyncio.Event(), asyncio.Event()

    async def slow(d: Delivery) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            three_in.set()
        await release.wait()
        running -= 1
        done.append(d.message.payload()["n"])
        if len(done) == 10:
            all_done.set()

    await broker.subscribe("q.prefetch", "orders", ["order.created"], slow, prefetch=3)
    await broker.publish("orders", [Message.json("order.created", {"n": i}) for i in range(10)])
    await within(three_in.wait())
    await ready_reaches(raw, f"{prefix}q.prefetch", 7)  # the broker holds back the rest
    assert running == 3
    release.set()

    await within(all_done.wait())
    assert peak == 3 and sorted(done) == list(range(10))


async def test_stop_waits_for_in_flight_handlers_which_are_acked(
    broker: RabbitBroker, raw: aio_pika.abc.AbstractConnection, prefix: str
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(d: Delivery) -> None:
        entered.set()
        await release.wait()

    sub = await broker.subscribe("q.stop", "orders", ["order.created"], slow)
    await broker.publish("orders", [Message.json("order.created", {})])
    await within(entered.wait())
    stopping = asyncio.create_task(sub.stop())
    await asyncio.sleep(0)
    assert not stopping.done()
    release.set()
    await within(stopping)
    assert await ready_count(raw, f"{prefix}q.stop") == 0  # acked, not requeued


async def test_a_message_delivered_before_without_ack_is_flagged_redelivered(
    broker: RabbitBroker, raw: aio_pika.abc.AbstractConnection, prefix: str
) -> None:
    inbox = Collector()
    sub = await broker.subscribe("q.redeliver", "orders", ["order.created"], inbox)
    await sub.stop()
    await broker.publish("orders", [Message.json("order.created", {})])
    channel = await raw.channel()
    queue = await channel.declare_queue(f"{prefix}q.redeliver", passive=True)
    assert await queue.get(no_ack=False, timeout=scaled(TIMEOUT)) is not None
    await channel.close()  # a consumer crashed before acking: the broker requeues it

    await broker.subscribe("q.redeliver", "orders", ["order.created"], inbox)
    (got,) = await inbox.wait_for(1)
    assert got.redelivered


async def test_quorum_queues(
    amqp_url: str, prefix: str, raw: aio_pika.abc.AbstractConnection, fast: bool
) -> None:
    broker = await RabbitBroker.open(amqp_url, prefix=prefix, quorum=True, fast_path=fast)
    try:

        def fail_once(d: Delivery) -> None:
            if d.message.payload()["id"] == "dead":
                raise RuntimeError("no")
            if d.attempt == 1:
                raise RuntimeError("once")

        inbox = Collector(fail_once)
        await broker.subscribe("q.quorum", "orders", ["order.*"], inbox, retry=FAST)
        ok, dead = Message.json("order.created", {"id": "ok"}), Message.json("order.created", {"id": "dead"})
        await broker.publish("orders", [ok, dead])
        (letter,) = await dead_letters(broker, "q.quorum", 1)
        assert (letter.id, letter.attempts) == (dead.message_id, 3)
        assert [d.attempt for d in inbox.got if d.message.message_id == ok.message_id] == [1, 2]
        # every queue is a quorum queue: redeclaring one as classic is refused
        for name in ("q.quorum", "q.quorum.dlq", "q.quorum.retry.50"):
            channel = await raw.channel()
            with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
                await channel.declare_queue(
                    f"{prefix}{name}", durable=True, arguments={"x-queue-type": "classic"}
                )
    finally:
        await broker.delete_topology()
        await broker.close()


async def test_delete_topology_removes_every_queue_and_exchange(
    amqp_url: str, prefix: str, raw: aio_pika.abc.AbstractConnection, fast: bool
) -> None:
    broker = await RabbitBroker.open(amqp_url, prefix=prefix, fast_path=fast)
    await broker.subscribe("q.gone", "orders", ["#"], Collector(), retry=FAST)
    await broker.delete_topology()
    await broker.close()
    for name in ("q.gone", "q.gone.dlq", "q.gone.retry.50", "q.gone.retry.100"):
        channel = await raw.channel()
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue(f"{prefix}{name}", passive=True)
    channel = await raw.channel()
    with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
        await channel.declare_exchange(f"{prefix}orders", passive=True)


def _close_connections_named(name: str) -> int:
    """Drop our connections server-side, as a network failure or a broker restart would."""
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.splitlines()
    pids = [line.split("\t")[0] for line in listing if name in line]
    for pid in pids:
        subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "test"], check=True, timeout=30)
    return len(pids)


def watch_frame_readers(monkeypatch: pytest.MonkeyPatch, fast: bool) -> list[Any]:
    """The frame readers of every aiormq connection opened from now on (reopened ones included)."""
    fastpath.install(fast)  # the fast wire puts its per-connection chooser in place: wrap that
    make = aiormq.connection.FrameReceiver
    readers: list[Any] = []

    def watched(reader: Any) -> Any:
        readers.append(make(reader))
        return readers[-1]

    monkeypatch.setattr(aiormq.connection, "FrameReceiver", watched)
    return readers


def reader_modules(readers: list[Any]) -> set[str]:
    return {type(r).__module__ for r in readers}


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl to drop connections")
async def test_a_consumer_and_publisher_survive_a_dropped_connection(
    amqp_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    readers = watch_frame_readers(monkeypatch, fast)
    # One wire per connection, even across reconnects: the fast reader, or aiormq's own.
    expected = {"ordermesh.messaging.rabbitmq.frames" if fast else "aiormq.connection"}
    broker = await RabbitBroker.open(f"{amqp_url}?reconnect_interval=0.2", prefix=prefix, fast_path=fast)
    try:
        assert len(readers) == 1 and reader_modules(readers) == expected
        inbox = Collector()
        await broker.subscribe("q.reconnect", "orders", ["order.created"], inbox)
        await broker.publish("orders", [Message.json("order.created", {"n": 1})])
        await inbox.wait_for(1)

        assert broker.connected
        assert _close_connections_named(f"ordermesh {prefix}") == 1

        async def published() -> bool:
            await broker.publish("orders", [Message.json("order.created", {"n": 2})])
            return True

        # The robust connection comes back on its own; publishing fails meanwhile.
        await eventually(published, what="the connection back", interval=0.1, ignoring=(BrokerUnavailable,))
        got = await inbox.wait_for(2)
        assert [d.message.payload()["n"] for d in got] == [1, 2]  # consuming resumed, nothing lost
        assert len(readers) == 2 and reader_modules(readers) == expected  # the reopened connection too
        assert broker.connected  # (aio-pika reconnects at once: the gap is too short to watch)
    finally:
        await broker.delete_topology()
        await broker.close()


async def test_a_quorum_queue_dead_letters_a_message_that_keeps_killing_its_consumer(
    amqp_url: str, prefix: str, raw: aio_pika.abc.AbstractConnection, fast: bool
) -> None:
    broker = await RabbitBroker.open(amqp_url, prefix=prefix, quorum=True, delivery_limit=2, fast_path=fast)
    try:
        sub = await broker.subscribe("q.crashy", "orders", ["order.*"], Collector())
        await sub.stop()  # a consumer that dies before acking, played by hand below
        poison = Message.json("order.created", {"id": "crashes-the-consumer"})
        await broker.publish("orders", [poison])
        channel = await raw.channel()
        queue = await channel.declare_queue(f"{prefix}q.crashy", passive=True)
        for _ in range(3):  # delivered, not acked, back in the queue: three times, limit two
            got = await queue.get(no_ack=False, timeout=scaled(TIMEOUT))
            await got.nack(requeue=True)
        assert await queue.get(no_ack=False, fail=False) is None  # gone from the consumer queue…
        (letter,) = await dead_letters(broker, "q.crashy", 1)  # …into its dead-letter queue
        assert letter.id == poison.message_id and "delivery limit" in letter.error
        assert letter.original_routing_key == "order.created"
        for _ in range(3):  # reading the DLQ (get + requeue) never drops a letter
            assert [d.id for d in await broker.dead_letters("q.crashy")] == [poison.message_id]

        inbox = Collector()  # the fixed consumer is back: replay hands it the original message
        await broker.subscribe("q.crashy", "orders", ["order.*"], inbox)
        await broker.replay("q.crashy", poison.message_id)
        (again,) = await inbox.wait_for(1)
        assert (again.message.message_id, again.message.routing_key) == (poison.message_id, "order.created")
        assert (again.exchange, again.attempt) == ("orders", 1)
    finally:
        await broker.delete_topology()
        await broker.close()


# --- the wires ---------------------------------------------------------------------------------


async def round_trip(broker: RabbitBroker) -> None:
    """Publish, consume, retry once, dead-letter one: every road a message takes."""

    def fail(d: Delivery) -> None:
        if d.message.payload()["id"] == "poison":
            raise PermanentError("poison")
        if d.attempt == 1:
            raise RuntimeError("once")

    inbox = Collector(fail)
    await broker.subscribe("q.trip", "orders", ["order.*"], inbox, retry=FAST)
    await broker.publish("orders", [Message.json("order.created", {"id": i}) for i in ("ok", "poison")])
    (letter,) = await dead_letters(broker, "q.trip", 1)
    assert letter.error == "PermanentError: poison"
    await inbox.wait_for(3)  # ok twice (retried once), poison once
    assert sorted((d.message.payload()["id"], d.attempt) for d in inbox.got) == [
        ("ok", 1),
        ("ok", 2),
        ("poison", 1),
    ]


async def test_each_wire_runs_its_own_pieces_alone(
    amqp_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    from ordermesh.messaging.rabbitmq import frames, properties, publisher, tap

    calls: dict[str, int] = {}

    def counted(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] = calls.get(name, 0) + 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    counted(frames, "split_frames")  # the frame reader
    counted(tap.DeliveryTap, "_complete")  # a tapped delivery
    counted(publisher, "publish_frames")  # the publish pipeline
    counted(properties.WireProperties, "marshal")
    readers = watch_frame_readers(monkeypatch, fast)
    broker = await RabbitBroker.open(amqp_url, prefix=prefix, fast_path=fast)
    try:
        await broker.declare_exchange("orders")
        await round_trip(broker)
    finally:
        await broker.delete_topology()
        await broker.close()
    if fast:
        assert set(calls) == {"split_frames", "_complete", "publish_frames", "marshal"}
    else:  # nothing of the fast path runs: aiormq's reader, aiormq's publish, pamqp's properties
        assert calls == {} and reader_modules(readers) == {"aiormq.connection"}


async def test_the_url_switch_wins_over_the_argument(amqp_url: str, prefix: str) -> None:
    broker = await open_broker(f"{amqp_url}?prefix={prefix}&fast_path=0&reconnect_interval=0.2")
    try:
        assert isinstance(broker, RabbitBroker) and broker.fast_path is False
        await broker.declare_exchange("orders")
        await round_trip(broker)
    finally:
        await broker.delete_topology()
        await broker.close()
    stock = await RabbitBroker.open(f"{amqp_url}?fast_path=0", prefix=prefix, fast_path=True)
    await stock.close()
    assert stock.fast_path is False


async def test_unverified_versions_run_on_the_stock_path_with_one_warning(
    amqp_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    newer = {"aiormq": "7.99.0", "pamqp": "4.0.1"}
    monkeypatch.setattr(fastpath, "installed_versions", lambda: dict(newer))
    fastpath._warned.discard(tuple(sorted(newer.items())))
    with caplog.at_level("WARNING", "ordermesh.messaging.rabbitmq"):
        first = await RabbitBroker.open(amqp_url, prefix=prefix)
        second = await RabbitBroker.open(amqp_url, prefix=f"{prefix}2.")
        await second.close()
        try:
            assert first.fast_path is False and second.fast_path is False
            await first.declare_exchange("orders")
            await round_trip(first)
        finally:
            await first.delete_topology()
            await first.close()
    off = [r.getMessage() for r in caplog.records if "fast path off" in r.getMessage()]
    assert len(off) == 1 and "aiormq 7.99.0 (verified on 7.2.x)" in off[0]
