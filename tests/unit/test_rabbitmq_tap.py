"""The delivery tap: a tapped consumer's deliveries assembled in order, every other frame passed on."""

from __future__ import annotations

import asyncio
from typing import Any

from aiormq.abc import DeliveredMessage
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from ordermesh.messaging.rabbitmq.tap import DeliveryTap


class Channel:
    """What the tap needs of an aiormq channel: its frame queue."""

    def __init__(self) -> None:
        self.frames: Any = asyncio.Queue()


def _delivery(tag: str, n: int, body: bytes, parts: int = 1) -> list[Any]:
    step = max(1, -(-len(body) // parts))
    chunks = [body[i : i + step] for i in range(0, len(body), step)]
    return [
        Basic.Deliver(tag, n, False, "orders", "order.created"),
        ContentHeader(0, len(body), Basic.Properties(message_id=f"m{n}")),
        *[ContentBody(chunk) for chunk in chunks],
    ]


def _tapped(channel: Channel) -> tuple[DeliveryTap, list[DeliveredMessage]]:
    """The channel's tap, with consumer "mine" tapped into the returned list."""
    tap = DeliveryTap.on(channel)  # type: ignore[arg-type]
    got: list[DeliveredMessage] = []
    tap.add("mine", got.append)
    return tap, got


async def _feed(tap: Any, frames: list[Any]) -> None:
    for frame in frames:
        await tap.put((0, frame))


async def test_deliveries_to_a_tapped_consumer_come_whole_and_in_order() -> None:
    channel = Channel()
    queue = channel.frames
    tap, got = _tapped(channel)
    await _feed(
        tap,
        _delivery("mine", 1, b'{"n":1}')
        + _delivery("mine", 2, b"x" * 1000, parts=3)  # a body in several frames
        + _delivery("mine", 3, b""),  # no body frame at all
    )
    assert [(m.delivery_tag, m.body) for m in got] == [(1, b'{"n":1}'), (2, b"x" * 1000), (3, b"")]
    assert got[0].header.properties.message_id == "m1" and got[0].channel is channel
    assert queue.empty()  # none of it went the slow way


async def test_other_frames_reach_the_channels_own_reader_in_order() -> None:
    channel = Channel()
    queue = channel.frames
    tap, got = _tapped(channel)
    assert DeliveryTap.on(channel) is tap  # type: ignore[arg-type]  # one tap per channel
    others = _delivery("theirs", 7, b"{}")
    await _feed(tap, [Basic.ConsumeOk("mine"), *others, *_delivery("mine", 1, b"{}"), Basic.CancelOk("x")])
    assert len(got) == 1
    passed = []
    while not channel.frames.empty():  # the channel reads through the tap, from its old queue
        passed.append(await channel.frames.get())
        channel.frames.task_done()
    assert [frame for _, frame in passed][1:-1] == others
    assert queue.empty()


async def test_an_unexpected_frame_mid_delivery_drops_the_half_delivery_and_passes_on() -> None:
    channel = Channel()
    tap, got = _tapped(channel)
    deliver, header, _body = _delivery("mine", 1, b"{}")
    close = Basic.Cancel("mine")
    await _feed(tap, [deliver, header, close, *_delivery("mine", 2, b"{}")])
    assert [m.delivery_tag for m in got] == [2]  # the first is left unacked: redelivered
    assert (await channel.frames.get())[1] is close


async def test_a_consumer_no_longer_tapped_gets_nothing() -> None:
    channel = Channel()
    tap, got = _tapped(channel)
    deliver, header, body = _delivery("mine", 1, b"{}")
    await _feed(tap, [deliver, header])
    tap.discard("mine")
    await _feed(tap, [body])
    assert got == []


async def test_a_full_channel_queue_makes_the_reader_wait_not_fail() -> None:
    channel = Channel()
    channel.frames = asyncio.Queue(maxsize=1)  # aiormq bounds it (10 frames)
    tap, _ = _tapped(channel)
    await tap.put((0, Basic.ConsumeOk("mine")))
    second = asyncio.create_task(tap.put((0, Basic.CancelOk("other"))))
    await asyncio.sleep(0)
    assert not second.done()  # waiting for room, as aiormq's own put would
    assert isinstance((await channel.frames.get())[1], Basic.ConsumeOk)
    await asyncio.wait_for(second, 1)
    assert isinstance((await channel.frames.get())[1], Basic.CancelOk)
