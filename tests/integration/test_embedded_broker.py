"""What only the durable embedded broker (``sqlite:///PATH``) does: survive restarts and crashes,
and share one file between processes without handing a message to two of them."""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Sized
from pathlib import Path

import pytest

from ordermesh.messaging import open_broker
from ordermesh.messaging.embedded import EmbeddedBroker
from ordermesh.messaging.port import Delivery, Message, RetryPolicy
from tests.helpers import dead_letters, eventually, within


async def pending(broker: EmbeddedBroker) -> int:
    row = await broker.db.fetchrow("SELECT count(*) FROM mq_messages")
    assert row is not None
    return int(row[0])


async def test_messages_survive_closing_and_reopening_the_broker(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/broker.db"
    first = await open_broker(url)
    sub = await first.subscribe("q.durable", "orders", ["order.*"], _ignore)
    await sub.stop()  # the queue and its binding stay: publishing is routable with no consumer
    sent = [Message.json("order.created", {"n": n}, correlation_id=f"c{n}") for n in range(3)]
    await first.publish("orders", sent)
    await first.close()

    again = await open_broker(url)
    got: list[Delivery] = []
    done = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        got.append(delivery)
        if len(got) == len(sent):
            done.set()

    await again.subscribe("q.durable", "orders", ["order.*"], handler, prefetch=1)
    await within(done.wait())
    assert [d.message for d in got] == sent
    assert all(d.attempt == 1 and not d.redelivered for d in got)
    await again.close()


_SRC = str(Path(__file__).resolve().parents[2] / "src")
_CRASHING_CONSUMER = textwrap.dedent(
    """
    import asyncio, sys
    from ordermesh.messaging import open_broker

    async def main(url):
        broker = await open_broker(url)
        async def handler(delivery):
            print("got", delivery.message.message_id, flush=True)
            await asyncio.Event().wait()  # never acks: killed -9 while "handling"
        await broker.subscribe("q.crash", "orders", ["order.#"], handler)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main(sys.argv[1]))
    """
)


async def test_a_message_whose_consumer_died_unacked_is_redelivered_after_the_lease(tmp_path: Path) -> None:
    lease = 1.0
    url = f"sqlite:///{tmp_path}/broker.db?lease={lease}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([_SRC, *sys.path]),
    }
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CRASHING_CONSUMER, url, stdout=asyncio.subprocess.PIPE, env=env
    )
    assert child.stdout is not None
    broker = await EmbeddedBroker.open_url(url)
    try:
        assert (await within(child.stdout.readline(), 30)).split() == [b"ready"]
        sent = Message.json("order.created", {"id": "o-1"})
        await broker.publish("orders", [sent])
        line = await within(child.stdout.readline())
        assert line.split() == [b"got", sent.message_id.encode()]
        child.send_signal(signal.SIGKILL)
        await child.wait()
        killed_at = time.monotonic()

        got: list[Delivery] = []
        arrived = asyncio.Event()

        async def handler(delivery: Delivery) -> None:
            got.append(delivery)
            arrived.set()

        await broker.subscribe("q.crash", "orders", ["order.#"], handler)
        await within(arrived.wait())
        waited = time.monotonic() - killed_at
        ((delivery,),) = [got]
        assert delivery.message == sent and delivery.redelivered and delivery.attempt == 1
        assert waited < lease + 2
        await eventually(lambda: _is(pending(broker), 0))  # acknowledged this time
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await broker.close()


async def test_a_handler_cancelled_on_stop_gives_its_message_back_as_redelivered(tmp_path: Path) -> None:
    broker = await EmbeddedBroker.open(str(tmp_path / "broker.db"))
    started = asyncio.Event()

    async def hang(delivery: Delivery) -> None:
        started.set()
        await asyncio.Event().wait()

    sub = await broker.subscribe("q.hang", "orders", ["order.#"], hang)
    sent = Message.json("order.created", {"id": "o-1"})
    await broker.publish("orders", [sent])
    await within(started.wait())
    await sub.stop(grace=0.05)  # the handler never returns: cancelled, its message released

    got: list[Delivery] = []
    arrived = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        got.append(delivery)
        arrived.set()

    await broker.subscribe("q.hang", "orders", ["order.#"], handler)
    await within(arrived.wait())
    assert got[0].message == sent and got[0].redelivered
    await broker.close()


async def test_two_brokers_on_one_file_never_both_handle_a_message(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/broker.db"
    one, two = await open_broker(url), await open_broker(url)
    assert isinstance(one, EmbeddedBroker)
    handled: collections.Counter[str] = collections.Counter()
    by: collections.Counter[int] = collections.Counter()

    def consumer(index: int) -> Callable[[Delivery], Awaitable[None]]:
        async def handle(delivery: Delivery) -> None:
            handled[delivery.message.message_id] += 1
            by[index] += 1
            await asyncio.sleep(0)  # let the other consumer in

        return handle

    await one.subscribe("q.shared", "orders", ["order.#"], consumer(1), prefetch=8)
    await two.subscribe("q.shared", "orders", ["order.#"], consumer(2), prefetch=8)
    sent = [Message.json("order.created", {"n": n}) for n in range(200)]
    for start in range(0, 200, 20):  # in batches, so both consumers are busy meanwhile
        await (one if start % 40 else two).publish("orders", sent[start : start + 20])
    await eventually(lambda: _is(pending(one), 0))
    assert set(handled) == {m.message_id for m in sent}
    assert max(handled.values()) == 1
    assert by[1] + by[2] == 200
    await one.close()
    await two.close()


async def test_a_subscription_holds_at_most_prefetch_unacked_messages(tmp_path: Path) -> None:
    broker = await EmbeddedBroker.open(str(tmp_path / "broker.db"), poll_interval=0.01)
    release = asyncio.Event()
    running = 0
    peak = 0
    three = asyncio.Event()

    async def slow(delivery: Delivery) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            three.set()
        await release.wait()
        running -= 1

    await broker.subscribe("q.prefetch", "orders", ["order.#"], slow, prefetch=3)
    await broker.publish("orders", [Message.json("order.created", {"n": n}) for n in range(10)])
    await within(three.wait())
    leased = "SELECT count(*) FROM mq_messages WHERE lease_token IS NOT NULL"
    for _ in range(20):  # twenty poll intervals, and a publish's wake-up, change nothing
        await broker.publish("orders", [Message.json("order.created", {"n": "more"})])
        await asyncio.sleep(0.01)
        assert (await broker.db.fetch(leased))[0][0] == 3
    assert peak == 3
    release.set()
    await eventually(lambda: _is(pending(broker), 0))
    assert peak == 3
    await broker.close()


class _Clock:
    """The broker's clock, moved by the test: a lease runs out when the test says so."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_a_message_that_keeps_killing_its_consumer_is_dead_lettered_past_the_delivery_limit(
    tmp_path: Path,
) -> None:
    clock = _Clock()
    lease = 600.0  # fake seconds; the heartbeat (every lease / 3 real seconds) never comes
    broker = await EmbeddedBroker.open(
        str(tmp_path / "broker.db"),
        lease=lease,
        poll_interval=0.01,
        close_grace=0.05,
        clock=clock,
        delivery_limit=2,
    )
    crashed: list[Delivery] = []

    async def dies(delivery: Delivery) -> None:  # never acks: to the broker, a consumer that died
        crashed.append(delivery)
        await asyncio.Event().wait()

    try:
        poison = Message.json("order.created", {"id": "kills-its-consumer"})
        for n in range(3):  # limit two: delivered three times, never acked
            # Prefetch 1: a consumer stuck on the message claims nothing more, as a dead one.
            await broker.subscribe("q.poison", "orders", ["order.*"], dies, prefetch=1)
            if n == 0:
                await broker.publish("orders", [poison])
            else:
                clock.now += lease + 1  # the previous consumer's lease runs out
            await eventually(functools.partial(_has, crashed, n + 1))
        assert [(d.message, d.attempt, d.redelivered) for d in crashed] == [
            (poison, 1, False),
            (poison, 1, True),
            (poison, 1, True),
        ]

        got: list[Delivery] = []
        arrived = asyncio.Event()

        async def healthy(delivery: Delivery) -> None:
            got.append(delivery)
            arrived.set()

        await broker.subscribe("q.poison", "orders", ["order.*"], healthy)
        clock.now += lease + 1  # its claim finds the message past the limit: dead-lettered instead
        (letter,) = await dead_letters(broker, None, 1)
        assert (letter.id, letter.queue, letter.message) == (poison.message_id, "q.poison", poison)
        assert "delivered past the queue's delivery limit without an ack" in letter.error
        assert "3 deliveries, limit 2" in letter.error
        assert (letter.original_exchange, letter.original_routing_key) == ("orders", "order.created")
        assert letter.attempts == 1  # attempts count retries, and there were none
        assert await pending(broker) == 0 and got == []  # gone from the consumer queue, handed to no one

        await broker.replay("q.poison", poison.message_id)  # the consumer is fixed: a first attempt
        await within(arrived.wait())
        ((again,),) = [got]
        assert again.message == poison and again.exchange == "orders"
        assert again.attempt == 1 and not again.redelivered  # deliveries start again from zero
        await eventually(lambda: _is(pending(broker), 0))  # acknowledged
        assert await broker.dead_letters() == [] and len(crashed) == 3
    finally:
        await broker.close()


async def test_two_brokers_dead_letter_each_message_past_the_limit_once_and_handle_the_rest_once(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/broker.db?delivery_limit=2"
    one, two = await EmbeddedBroker.open_url(url), await EmbeddedBroker.open_url(url)
    sub = await one.subscribe("q.mixed", "orders", ["order.#"], _ignore)
    await sub.stop()
    sent = [Message.json("order.created", {"n": n}) for n in range(100)]
    poison = {m.message_id for m in sent[::2]}
    await one.publish("orders", sent)
    # As if each had been claimed three times by consumers that died: the next claim buries it.
    await one.db.execute(
        "UPDATE mq_messages SET deliveries = 3 WHERE message_id IN (SELECT value FROM json_each($1))",
        json.dumps(sorted(poison)),
    )
    handled: collections.Counter[str] = collections.Counter()

    async def handle(delivery: Delivery) -> None:
        handled[delivery.message.message_id] += 1
        await asyncio.sleep(0)  # let the other broker in

    try:
        await one.subscribe("q.mixed", "orders", ["order.#"], handle, prefetch=4)
        await two.subscribe("q.mixed", "orders", ["order.#"], handle, prefetch=4)
        letters = await dead_letters(one, None, len(poison))
        await eventually(lambda: _is(pending(one), 0))
        assert sorted(letter.id for letter in letters) == sorted(poison)  # each exactly once
        assert set(handled) == {m.message_id for m in sent} - poison
        assert max(handled.values()) == 1
    finally:
        await one.close()
        await two.close()


async def test_retries_do_not_count_towards_the_delivery_limit(tmp_path: Path) -> None:
    broker = await EmbeddedBroker.open(str(tmp_path / "broker.db"), poll_interval=0.01, delivery_limit=1)
    seen: list[tuple[int, bool]] = []

    async def fails(delivery: Delivery) -> None:
        seen.append((delivery.attempt, delivery.redelivered))
        raise RuntimeError("still broken")

    retry = RetryPolicy(max_attempts=4, initial=0.001, multiplier=1.0, maximum=0.001)
    try:
        await broker.subscribe("q.retried", "orders", ["order.*"], fails, retry=retry)
        sent = Message.json("order.created", {"id": "o-1"})
        await broker.publish("orders", [sent])
        (letter,) = await dead_letters(broker, None, 1)
        # Four deliveries with a limit of one, each a retry (deliveries reset): dead-lettered
        # by the retry policy with the handler's error, not by the delivery limit.
        assert seen == [(1, False), (2, False), (3, False), (4, False)]
        assert (letter.id, letter.attempts, letter.error) == (
            sent.message_id,
            4,
            "RuntimeError: still broken",
        )
        assert await pending(broker) == 0
    finally:
        await broker.close()


async def test_the_delivery_limit_comes_from_the_url(tmp_path: Path) -> None:
    default = await open_broker(f"sqlite:///{tmp_path}/a.db")
    chosen = await open_broker(f"sqlite:///{tmp_path}/b.db?lease=5&delivery_limit=3")
    assert isinstance(default, EmbeddedBroker) and isinstance(chosen, EmbeddedBroker)
    assert (default.delivery_limit, chosen.delivery_limit, chosen.lease) == (20, 3, 5.0)
    await default.close()
    await chosen.close()


@pytest.mark.parametrize("value", ["abc", "0", "-1", "2.5", "1_0"])
async def test_a_delivery_limit_that_is_not_a_positive_integer_fails_clearly(
    tmp_path: Path, value: str
) -> None:
    with pytest.raises(ValueError, match=f"delivery_limit must be a positive integer, not '{value}'"):
        await open_broker(f"sqlite:///{tmp_path}/broker.db?delivery_limit={value}")
    assert not (tmp_path / "broker.db").exists()  # refused before opening anything
    with pytest.raises(ValueError, match="delivery_limit must be a positive integer"):
        await EmbeddedBroker.open(str(tmp_path / "broker.db"), delivery_limit=0)


async def _ignore(delivery: Delivery) -> None:
    return None


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def _has(items: Sized, count: int) -> bool:
    return len(items) == count


@pytest.mark.parametrize("query", ["lease=abc", "lease=0", "poll=-1", "poll=inf"])
async def test_bad_lease_or_poll_in_the_url_fail_clearly(tmp_path: Path, query: str) -> None:
    name = query.split("=")[0]
    with pytest.raises(ValueError, match=f"{name} must be a positive number of seconds"):
        await EmbeddedBroker.open_url(f"sqlite:///{tmp_path}/mq.db?{query}")
