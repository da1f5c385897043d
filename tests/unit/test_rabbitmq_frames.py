"""The fast frame reader reads, and WireProperties write, exactly what pamqp does."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiormq.connection
import pamqp.frame
import pytest
from aiormq.abc import ChannelFrame
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError
from pamqp import commands
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from ordermesh.messaging.rabbitmq.frames import FastFrameReceiver, Received, fast_frames, split_frames
from ordermesh.messaging.rabbitmq.properties import WireProperties
from ordermesh.messaging.rabbitmq.publisher import publish_frames

Basic = commands.Basic
NOT_UTF8 = b"#not-utf8#"  # pamqp cannot encode bytes that are not UTF-8: patched in on the wire


def _headers() -> dict[str, Any]:
    return {
        "x-ordermesh-type": "order.created",
        "x-ordermesh-schema": 2,
        "big": 2**40,
        "negative": -5,
        "flag": True,
        "off": False,
        "nested": {"a": "b", "n": 1, "deeper": {"x": "y"}},
        "x-death": [
            {
                "count": 1,
                "exchange": "orders",
                "queue": "notifications.order_created",
                "reason": "rejected",
                "routing-keys": ["order.created"],
                "time": datetime(2026, 11, 26, 1, 2, 3, tzinfo=UTC),
            }
        ],
        "price": Decimal("12.34"),
        "ratio": 0.5,
        "raw": NOT_UTF8.decode(),  # made invalid UTF-8 on the wire by _wire()
        "octets": bytearray(b"\x00\x01"),
        "unicode": "Bestellung über 5 €",
        "none": None,
    }


def _frames() -> list[tuple[int, Any]]:
    """Frames of every kind the reader meets: fast-path ones and ones left to pamqp."""
    body = b'{"id":"order-1","user_email":"a@example.com"}'
    full = Basic.Properties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=_headers(),
        delivery_mode=2,
        priority=5,
        correlation_id="order-1",
        reply_to="replies",
        expiration="60000",
        message_id="4f0c2a9e-0000-4000-8000-000000000001",
        timestamp=datetime(2026, 11, 26, 1, 2, 3, tzinfo=UTC),
        message_type="order.created",
        user_id="guest",
        app_id="ordermesh",
    )
    return [
        (1, Basic.Deliver("ctag-1", 1, False, "om.orders", "order.created")),
        (1, ContentHeader(0, len(body), full)),
        (1, ContentBody(body)),
        (1, Basic.Deliver("ctag-1", 2**40, True, "", "order.shipped")),
        (1, ContentHeader(0, 0, Basic.Properties())),
        (1, ContentHeader(0, 3, Basic.Properties(message_id="m", delivery_mode=1))),
        (2, ContentBody(b"abc")),
        (2, Basic.Ack(7, multiple=True)),
        (2, Basic.Ack(8)),
        (2, Basic.Nack(9, multiple=False, requeue=True)),
        (2, Basic.Nack(10, multiple=True, requeue=False)),
        (0, Heartbeat()),
        (3, Basic.ConsumeOk("ctag-3")),  # not on the fast path: pamqp decodes it
        (3, Basic.Return(312, "NO_ROUTE", "om.orders", "order.nowhere")),
        (0, commands.Connection.Blocked("low on memory")),
        (4, ContentBody(bytes(range(256)) * 600)),  # larger than one read
    ]


def _wire(frames: list[tuple[int, Any]]) -> bytes:
    wire = b"".join(pamqp.frame.marshal(frame, channel) for channel, frame in frames)
    return wire.replace(NOT_UTF8, b"\xff" * len(NOT_UTF8))


def _typed(value: Any) -> Any:
    """The value with every type spelled out (True == 1, but not here)."""
    if isinstance(value, dict):
        return {key: _typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_typed(item) for item in value]
    return (type(value), value)


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, ContentHeader):
        return (a.class_id, a.weight, a.body_size) == (b.class_id, b.weight, b.body_size) and _same(
            a.properties, b.properties
        )
    if isinstance(a, Basic.Properties | commands.Basic.Deliver | Basic.Ack | Basic.Nack | Basic.Return):
        return all(_typed(getattr(a, slot)) == _typed(getattr(b, slot)) for slot in a.__slots__)
    if isinstance(a, ContentBody):
        return a.value == b.value
    return vars(a) == vars(b) if hasattr(a, "__dict__") else True


def _stock(wire: bytes) -> list[Received]:
    out, offset = [], 0
    while offset < len(wire):
        used, channel, frame = pamqp.frame.unmarshal(wire[offset:])
        out.append((used, channel, frame))
        offset += used
    return out


def _check(got: list[Received], expected: list[Received]) -> None:
    assert len(got) == len(expected)
    for (size, channel, frame), (e_size, e_channel, e_frame) in zip(got, expected, strict=True):
        assert (size, channel) == (e_size, e_channel)
        assert _same(frame, e_frame), (frame, e_frame)


def test_split_frames_decodes_as_pamqp_does() -> None:
    wire = _wire(_frames())
    got: deque[Received] = deque()
    assert split_frames(wire, got) == len(wire)
    _check(list(got), _stock(wire))
    headers = got[1][2].properties.headers
    assert headers["raw"] == b"\xff" * len(NOT_UTF8) and headers["flag"] is True


def test_split_frames_leaves_an_incomplete_frame() -> None:
    wire = _wire(_frames()[:3])
    got: deque[Received] = deque()
    used = split_frames(wire[:-1], got)
    assert len(got) == 2 and used == len(wire) - len(pamqp.frame.marshal(_frames()[2][1], 1))


def test_a_frame_without_its_end_byte_is_invalid() -> None:
    wire = bytearray(_wire(_frames()[:1]))
    wire[-1] = 0
    with pytest.raises(InvalidFrameError):
        split_frames(bytes(wire), deque())


def test_a_malformed_frame_fails_as_in_pamqp() -> None:
    frame = bytearray(pamqp.frame.marshal(ContentHeader(0, 1, Basic.Properties(headers={"a": "b"})), 1))
    frame[7 + 14 + 3] = 0xFF  # the header table's length now runs past the frame
    with pytest.raises(pamqp.exceptions.UnmarshalingException):
        pamqp.frame.unmarshal(bytes(frame))
    with pytest.raises(InvalidFrameError):
        split_frames(bytes(frame), deque())


async def _read_all(wire: bytes, chunks: list[int]) -> list[Received]:
    reader = asyncio.StreamReader()
    receiver = FastFrameReceiver(reader)
    at = 0
    for size in chunks:
        reader.feed_data(wire[at : at + size])
        at += size
    reader.feed_data(wire[at:])
    reader.feed_eof()
    return [frame async for frame in receiver]


@pytest.mark.parametrize("seed", range(5))
async def test_the_receiver_yields_every_frame_whatever_the_chunking(seed: int) -> None:
    wire = _wire(_frames() * 3)
    rng = random.Random(seed)
    chunks = [rng.randint(1, 300) for _ in range(rng.randint(1, 200))]
    _check(await _read_all(wire, chunks), _stock(wire))


async def test_a_connection_closed_inside_a_frame_is_a_connection_error() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(_wire(_frames()[:2])[:-5])
    reader.feed_eof()
    receiver = FastFrameReceiver(reader)
    assert isinstance((await receiver.__anext__())[2], Basic.Deliver)
    with pytest.raises(AMQPConnectionError, match="unexpectedly closed"):
        await receiver.__anext__()


async def test_only_connections_opened_in_fast_frames_use_it() -> None:
    reader = asyncio.StreamReader()
    with fast_frames():
        assert type(aiormq.connection.FrameReceiver(reader)) is FastFrameReceiver
    assert type(aiormq.connection.FrameReceiver(reader)) is not FastFrameReceiver


def _property_sets() -> list[dict[str, Any]]:
    full = vars_of(_frames()[1][1].properties)
    full["headers"] = {k: v for k, v in full["headers"].items() if k != "raw"}
    return [
        {},
        full,
        {"message_id": "m", "delivery_mode": 2, "headers": {}},
        {"content_type": "", "message_type": "order.created", "priority": 0, "delivery_mode": 1},
        {"headers": {"i8": -128, "i16": 30_000, "u16": 60_000}},
        {"headers": {"i32": -(2**31), "u32": 2**32 - 1, "i64": 2**62, "t": True, "f": False}},
        {"headers": {"x" * 200: "long key", "k": "v"}},  # pamqp truncates the key: so must we
        {"headers": {"unicode": "ü€𝄞", "": "empty key"}, "app_id": "ordermesh", "user_id": "guest"},
        {"timestamp": datetime(2026, 11, 26, tzinfo=UTC), "expiration": "1000", "reply_to": "r"},
    ]


def vars_of(properties: Basic.Properties) -> dict[str, Any]:
    return {slot: getattr(properties, slot) for slot in properties.__slots__ if getattr(properties, slot)}


@pytest.mark.parametrize("fields", _property_sets())
def test_wire_properties_marshal_to_pamqps_bytes(fields: dict[str, Any]) -> None:
    assert WireProperties(**fields).marshal() == Basic.Properties(**fields).marshal()


def test_wire_properties_refuse_what_pamqp_refuses() -> None:
    with pytest.raises(TypeError):
        Basic.Properties(message_id="x" * 256).marshal()
    with pytest.raises(TypeError):
        WireProperties(message_id="x" * 256).marshal()
    with pytest.raises(TypeError):
        WireProperties(headers={"bad": object()}).marshal()  # type: ignore[dict-item]


def test_wire_properties_are_pamqp_properties_in_every_other_way() -> None:
    properties = WireProperties(message_id="m", headers={"a": "b"})
    assert properties  # aiormq publishes `properties or <defaults>`
    assert properties == Basic.Properties(message_id="m", headers={"a": "b"})


@pytest.mark.parametrize("size", [0, 1, 100, 4088, 4089, 10_000])
def test_publish_frames_are_what_aiormq_writes(size: int) -> None:
    max_content = 4088  # a frame_max of 4096, so bodies split
    body = bytes(i % 251 for i in range(size))
    properties = WireProperties(message_id="m", headers={"a": "b", "n": 7}, delivery_mode=2)
    bodies = [ContentBody(body[i : i + max_content]) for i in range(0, size, max_content)]
    aiormq_frames = ChannelFrame.marshall(
        channel_number=3,
        frames=[
            Basic.Publish(exchange="om.orders", routing_key="order.created", mandatory=True),
            ContentHeader(properties=properties, body_size=size),
            *bodies,
        ],
    )
    assert (
        publish_frames(3, "om.orders", "order.created", properties, body, max_content)
        == aiormq_frames.payload
    )


def test_publish_frames_refuse_a_routing_key_longer_than_amqp_allows() -> None:
    with pytest.raises(ValueError, match="255 bytes"):
        publish_frames(1, "orders", "k" * 256, WireProperties(), b"{}", 4088)
