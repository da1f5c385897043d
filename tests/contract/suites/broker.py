"""The broker contract: every adapter (memory, embedded, RabbitMQ, …) must pass every test here.

To check an adapter, subclass ``BrokerContract`` and give the subclass a ``broker_url`` fixture: a
broker of its own for each test (a fresh file, a fresh name prefix), which ``open_broker`` opens.
The ``broker`` fixture opens it with the ``orders`` exchange declared and deletes what the test
declared afterwards; an adapter no URL names overrides ``broker`` (and ``broker_url`` stays for
the one test that opens and closes a broker itself)::

    class TestEmbeddedBroker(BrokerContract):
        @pytest.fixture
        def broker_url(self, tmp_path: Path) -> str:
            return f"sqlite:///{tmp_path}/broker.db"
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ordermesh.messaging import Broker, open_broker
from ordermesh.messaging.ordering import in_order
from ordermesh.messaging.port import Delivery, Message, PermanentError, Unroutable
from tests.helpers import FAST, Collector, dead_letters, within


class BrokerContract:
    """Every test a broker adapter must pass; a subclass gives ``broker_url``."""

    @pytest.fixture
    async def broker(self, broker_url: str) -> AsyncIterator[Broker]:
        b = await open_broker(broker_url)
        await b.declare_exchange("orders")
        yield b
        await b.delete_topology()
        await b.close()

    async def test_topic_wildcards_route_like_rabbitmq(self, broker: Broker) -> None:
        star, hash_, exact = Collector(), Collector(), Collector()
        await broker.subscribe("q.star", "orders", ["order.*"], star)
        await broker.subscribe("q.hash", "orders", ["order.#"], hash_)
        await broker.subscribe("q.exact", "orders", ["order.created"], exact)
        keys = ["order.created", "order.paid", "order.created.v2", "order"]
        await broker.publish("orders", [Message.json(k, {"k": k}) for k in keys])
        assert [d.message.routing_key for d in await hash_.wait_for(4)] == keys
        assert sorted(d.message.routing_key for d in await star.wait_for(2)) == [
            "order.created",
            "order.paid",
        ]
        assert [d.message.routing_key for d in await exact.wait_for(1)] == ["order.created"]

    async def test_a_message_no_queue_wants_is_an_error_not_a_loss(self, broker: Broker) -> None:
        paid = Collector()
        await broker.subscribe("q.paid", "orders", ["order.paid"], paid)
        lost = Message.json("order.created", {"id": "1"})
        with pytest.raises(Unroutable) as refused:
            await broker.publish("orders", [lost])
        assert refused.value.message_ids == (lost.message_id,)
        # In a batch, the error names exactly the unroutable ones; the others were published.
        batch = [
            Message.json("order.paid", {"n": 1}),
            Message.json("order.created", {"n": 2}),
            Message.json("order.paid", {"n": 3}),
        ]
        with pytest.raises(Unroutable) as refused:
            await broker.publish("orders", batch)
        assert refused.value.message_ids == (batch[1].message_id,)
        assert [d.message.payload()["n"] for d in await paid.wait_for(2)] == [1, 3]

    async def test_the_envelope_arrives_whole(self, broker: Broker) -> None:
        inbox = Collector()
        await broker.subscribe("q.env", "orders", ["order.created"], inbox)
        sent = Message.json(
            "order.created",
            {"id": "o-1", "user_email": "a@example.com"},
            type="OrderCreated",
            schema_version=2,
            correlation_id="corr-1",
            causation_id="cause-1",
            headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        )
        await broker.publish("orders", [sent])
        (got,) = await inbox.wait_for(1)
        m = got.message
        assert (m.message_id, m.type, m.schema_version) == (sent.message_id, "OrderCreated", 2)
        assert (m.correlation_id, m.causation_id) == ("corr-1", "cause-1")
        assert m.headers.get("traceparent") == sent.headers["traceparent"]
        assert m.payload() == {"id": "o-1", "user_email": "a@example.com"}
        assert abs((m.occurred_at - sent.occurred_at).total_seconds()) < 0.001
        assert (got.exchange, got.queue, got.attempt) == ("orders", "q.env", 1)

    async def test_one_consumer_with_prefetch_one_sees_publish_order(self, broker: Broker) -> None:
        inbox = Collector()
        await broker.subscribe("q.order", "orders", ["order.#"], inbox, prefetch=1)
        await broker.publish("orders", [Message.json("order.created", {"n": i}) for i in range(50)])
        assert [d.message.payload()["n"] for d in await inbox.wait_for(50)] == list(range(50))

    async def test_failures_are_retried_with_backoff_then_succeed(self, broker: Broker) -> None:
        def fail_twice(d: Delivery) -> None:
            if d.attempt < 3:
                raise RuntimeError(f"smtp down (attempt {d.attempt})")

        inbox = Collector(fail_twice)
        await broker.subscribe("q.retry", "orders", ["order.created"], inbox, retry=FAST)
        await broker.publish("orders", [Message.json("order.created", {"id": "1"})])
        assert [d.attempt for d in await inbox.wait_for(3)] == [1, 2, 3]
        assert await broker.dead_letters("q.retry") == []

    async def test_exhausted_retries_dead_letter_with_the_reason_and_the_consumer_goes_on(
        self, broker: Broker
    ) -> None:
        def always(d: Delivery) -> None:
            if d.message.payload()["id"] == "bad":
                raise RuntimeError("handler bug")

        inbox = Collector(always)
        await broker.subscribe("q.dead", "orders", ["order.created"], inbox, retry=FAST, prefetch=1)
        bad = Message.json("order.created", {"id": "bad"})
        await broker.publish("orders", [bad, Message.json("order.created", {"id": "good"})])
        (letter,) = await dead_letters(broker, "q.dead", 1)
        assert letter.id == bad.message_id and letter.attempts == 3
        assert "handler bug" in letter.error
        assert (letter.original_exchange, letter.original_routing_key) == ("orders", "order.created")
        assert any(d.message.payload()["id"] == "good" for d in inbox.got)

    async def test_poison_goes_to_the_dead_letter_queue_at_once_and_can_be_replayed(
        self, broker: Broker
    ) -> None:
        poisoned = {"yes": True}

        def reject(d: Delivery) -> None:
            if poisoned["yes"]:
                d.message.payload()  # raises PermanentError: the body is not JSON

        inbox = Collector(reject)
        await broker.subscribe("q.poison", "orders", ["order.created"], inbox, retry=FAST)
        junk = Message("order.created", b"{not json", type="order.created")
        await broker.publish("orders", [junk])
        (letter,) = await dead_letters(broker, "q.poison", 1)
        assert letter.attempts == 1 and "not JSON" in letter.error
        assert len(inbox.got) == 1

        poisoned["yes"] = False  # the consumer was fixed: replay sends it back to the queue it died in
        await broker.replay("q.poison", junk.message_id)
        replayed = (await inbox.wait_for(2))[-1]
        assert (replayed.message.message_id, replayed.attempt) == (junk.message_id, 1)
        assert replayed.message.routing_key == "order.created"
        assert await broker.dead_letters("q.poison") == []

    async def test_permanent_error_raised_by_a_handler_skips_retries(self, broker: Broker) -> None:
        def unknown(d: Delivery) -> None:
            raise PermanentError("unknown message type 'order.exploded'")

        inbox = Collector(unknown)
        await broker.subscribe("q.perm", "orders", ["order.#"], inbox, retry=FAST)
        await broker.publish("orders", [Message.json("order.exploded", {})])
        (letter,) = await dead_letters(broker, "q.perm", 1)
        assert letter.attempts == 1 and len(inbox.got) == 1

    async def test_connected_until_closed(self, broker_url: str) -> None:
        broker = await open_broker(broker_url)
        try:
            assert broker.connected
        finally:
            await broker.close()
        assert not broker.connected

    async def test_in_order_keeps_each_keys_deliveries_in_sequence_and_keys_concurrent(
        self, broker: Broker
    ) -> None:
        keys, per_key = 4, 15
        finished: list[tuple[str, int]] = []
        busy: set[str] = set()
        overlaps, most = [], 0
        done = asyncio.Event()

        async def handle(delivery: Delivery) -> None:
            nonlocal most
            payload = delivery.message.payload()
            key = payload["key"]
            if key in busy:
                overlaps.append(payload)
            busy.add(key)
            most = max(most, len(busy))
            for _ in range((payload["seq"] * 7 + len(key)) % 5):  # uneven work: later ones may overtake
                await asyncio.sleep(0)
            busy.discard(key)
            finished.append((key, payload["seq"]))
            if len(finished) == keys * per_key:
                done.set()

        await broker.subscribe("ordered", "orders", ["order.#"], in_order(handle), prefetch=32)
        await broker.publish(
            "orders",
            [
                Message.json("order.updated", {"key": f"k{k}", "seq": seq}, correlation_id=f"k{k}")
                for seq in range(per_key)
                for k in range(keys)
            ],
        )
        await within(done.wait(), what="every delivery handled")
        for k in range(keys):
            assert [seq for key, seq in finished if key == f"k{k}"] == list(range(per_key))
        assert overlaps == []  # one at a time per key
        assert most > 1  # different keys still ran side by side
