"""The test kit's own promises (``tests.helpers``): a poll returns the first good value and fails
at its ceiling naming what it waited for, the scale stretches every ceiling, and the collector
keeps what a broker hands it."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from ordermesh.messaging.memory import MemoryBroker
from ordermesh.messaging.port import Delivery, Message, PermanentError
from tests.helpers import (
    Collector,
    dead_letters,
    eventually,
    eventually_sync,
    promptly,
    servers,
    timing,
    within,
)


async def test_eventually_returns_the_first_truthy_value_sync_or_async() -> None:
    counter = itertools.count()
    assert await eventually(lambda: next(counter) >= 3 and "ready") == "ready"

    async def letters() -> list[str]:
        return ["a"] if next(counter) >= 6 else []

    assert await eventually(letters) == ["a"]


async def test_eventually_fails_at_its_ceiling_naming_what_and_the_last_assertion() -> None:
    with pytest.raises(AssertionError, match=r"within 0\.1 s: the sink up \(last: 0\)"):
        await eventually(lambda: 0, 0.1, what="the sink up")

    def check() -> bool:
        raise AssertionError("still 2 mails")

    with pytest.raises(AssertionError, match="still 2 mails"):
        await eventually(check, 0.05)


async def test_eventually_retries_what_it_is_told_to_ignore_and_nothing_else() -> None:
    calls = itertools.count()

    def flaky() -> bool:
        if next(calls) < 2:
            raise ConnectionError("not yet")
        return True

    assert await eventually(flaky, ignoring=(ConnectionError,))
    calls = itertools.count()
    with pytest.raises(ConnectionError):  # not ignored: at once, not at the ceiling
        await eventually(flaky, 5)
    assert next(calls) == 1


def test_the_sync_twin_polls_the_same_way() -> None:
    counter = itertools.count()
    assert eventually_sync(lambda: next(counter) == 2, interval=0.001)
    with pytest.raises(AssertionError, match="another process"):
        eventually_sync(lambda: False, 0.05, what="another process", interval=0.01)


def test_the_scale_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERMESH_TEST_TIMEOUT_SCALE", "3")
    assert timing._scale() == 3.0
    monkeypatch.setenv("ORDERMESH_TEST_TIMEOUT_SCALE", "")
    assert timing._scale() == 1.0
    for bad in ("slow", "0", "-1"):
        monkeypatch.setenv("ORDERMESH_TEST_TIMEOUT_SCALE", bad)
        with pytest.raises(ValueError, match="ORDERMESH_TEST_TIMEOUT_SCALE"):
            timing._scale()
    monkeypatch.setattr(timing, "SCALE", 2.5)
    assert timing.scaled(4) == 10.0


async def test_within_and_promptly_bound_an_awaitable() -> None:
    assert await within(asyncio.sleep(0, "done")) == "done"
    with pytest.raises(AssertionError, match="the handler"):
        await within(asyncio.Event().wait(), 0.05, what="the handler")
    assert await promptly(asyncio.sleep(0, 1), 1.0) == 1
    with pytest.raises(AssertionError, match="a read took"):
        await promptly(asyncio.sleep(0.05), 0.01, what="a read")


async def test_the_collector_keeps_every_attempt_and_decoding_refuses_poison() -> None:
    broker = MemoryBroker()
    await broker.declare_exchange("orders")

    def refuse(_: Delivery) -> None:
        raise PermanentError("no")

    failing = Collector(refuse)
    decoding = Collector(decode=True)
    await broker.subscribe("q.fail", "orders", ["order.*"], failing)
    await broker.subscribe("q.decode", "orders", ["order.*"], decoding)
    junk, good = Message("order.created", b"{not json"), Message.json("order.created", {"n": 1})
    await broker.publish("orders", [junk, good])
    assert [d.message for d in await failing.wait_for(2)] == [junk, good]
    assert len(failing.at) == 2 and failing.at[0] <= failing.at[1]
    assert [letter.id for letter in await dead_letters(broker, "q.fail", 2)] == [
        junk.message_id,
        good.message_id,
    ]
    assert [d.message for d in await decoding.wait_for(1)] == [good]  # the poison is not kept
    everywhere = await dead_letters(broker, None, 3)  # every queue's
    assert sorted(letter.queue for letter in everywhere) == ["q.decode", "q.fail", "q.fail"]
    with pytest.raises(AssertionError, match="3 deliveries"):
        await decoding.wait_for(3, timeout=0.05)
    await broker.close()


def test_free_port_never_hands_out_a_port_twice_even_when_the_os_repeats_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    offered = iter([41001, 41001, 41001, 41002])

    class Probe:
        def __enter__(self) -> Probe:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def bind(self, address: tuple[str, int]) -> None:
            pass

        def getsockname(self) -> tuple[str, int]:
            return "127.0.0.1", next(offered)

    monkeypatch.setattr(servers.socket, "socket", Probe)
    monkeypatch.setattr(servers, "_handed_out", set())
    assert [servers.free_port(), servers.free_port()] == [41001, 41002]
