"""What only the durable embedded broker (``sqlite:///PATH``) does: survive restarts and crashes,
and share one file between processes without handing a message to two of them."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ordermesh.messaging import open_broker
from ordermesh.messaging.embedded import EmbeddedBroker
from ordermesh.messaging.port import Delivery, Message


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    async def loop() -> None:
        while True:
            if await condition():
                return
            await asyncio.sleep(0.01)

    await asyncio.wait_for(loop(), timeout)


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
    await asyncio.wait_for(done.wait(), 10)
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
        assert (await asyncio.wait_for(child.stdout.readline(), 30)).split() == [b"ready"]
        sent = Message.json("order.created", {"id": "o-1"})
        await broker.publish("orders", [sent])
        line = await asyncio.wait_for(child.stdout.readline(), 10)
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
        await asyncio.wait_for(arrived.wait(), 10)
        waited = time.monotonic() - killed_at
        ((delivery,),) = [got]
        assert delivery.message == sent and delivery.redelivered and delivery.attempt == 1
        assert waited < lease + 2
        await until(lambda: _is(pending(broker), 0))  # acknowledged this time
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
    await asyncio.wait_for(started.wait(), 10)
    await sub.stop(grace=0.05)  # the handler never returns: cancelled, its message released

    got: list[Delivery] = []
    arrived = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        got.append(delivery)
        arrived.set()

    await broker.subscribe("q.hang", "orders", ["order.#"], handler)
    await asyncio.wait_for(arrived.wait(), 10)
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
    await until(lambda: _is(pending(one), 0))
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
    await asyncio.wait_for(three.wait(), 10)
    leased = "SELECT count(*) FROM mq_messages WHERE lease_token IS NOT NULL"
    for _ in range(20):  # twenty poll intervals, and a publish's wake-up, change nothing
        await broker.publish("orders", [Message.json("order.created", {"n": "more"})])
        await asyncio.sleep(0.01)
        assert (await broker.db.fetch(leased))[0][0] == 3
    assert peak == 3
    release.set()
    await until(lambda: _is(pending(broker), 0))
    assert peak == 3
    await broker.close()


async def _ignore(delivery: Delivery) -> None:
    return None


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
