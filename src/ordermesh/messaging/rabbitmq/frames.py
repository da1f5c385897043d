"""A faster frame reader for aiormq connections that ordermesh opens.

aiormq reads every frame with three ``readexactly`` awaits under a lock into a ``BytesIO`` and
decodes it with pamqp's generic, attribute-by-attribute unmarshalling. A delivery is three
frames (method, content header, body), so that reader was a third of a consumer's event-loop
time (py-spy, ``bench messaging``). ``FastFrameReceiver`` reads the socket in chunks and cuts
every complete frame out of each chunk; the frames a consumer and a confirming publisher see
most (``Basic.Deliver``, ``Basic.Ack``, ``Basic.Nack``, ``Basic`` content headers, bodies,
heartbeats) are decoded by hand into the same pamqp objects, everything else (and anything the
fast path cannot read) by pamqp itself. ``tests/unit/test_rabbitmq_frames.py`` checks both
paths give equal objects.

Scope: only connections opened inside ``fast_frames()`` use it (``RabbitBroker.open`` on the
fast wire does, and aio-pika's reconnect loop inherits the context), so other aiormq users in the process keep
the stock reader. The handshake still goes through the stock ``get_frame``; the reader takes
over for the connection's frame loop (``__anext__``). Tied to aiormq's ``FrameReceiver`` and
pamqp's frame classes: ``fastpath.install`` imports this module only on the minor versions it
was verified on.
"""

from __future__ import annotations

import contextlib
import contextvars
import struct
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import aiormq.connection
import pamqp.frame
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError
from pamqp import commands, decode
from pamqp.body import ContentBody
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from ordermesh.messaging.rabbitmq.properties import LAYOUT

READ_SIZE = 1 << 16
_FRAME_END = 0xCE
_FRAME_HEADER = struct.Struct(">BHI")
_METHOD_INDEX = struct.Struct(">I")
_CONTENT_HEADER = struct.Struct(">HHQH")
_TAG_AND_BITS = struct.Struct(">qB")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">l")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")

_Deliver = commands.Basic.Deliver
_Ack = commands.Basic.Ack
_Nack = commands.Basic.Nack
_Properties = commands.Basic.Properties
_DELIVER, _ACK, _NACK = _Deliver.index, _Ack.index, _Nack.index
_BASIC_CLASS = commands.Basic.frame_id

Received = tuple[int, int, Any]  # (frame size, channel number, pamqp frame), as aiormq yields

_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("ordermesh_fast_frames", default=False)
_StockReceiver = aiormq.connection.FrameReceiver


@contextlib.contextmanager
def fast_frames() -> Iterator[None]:
    """aiormq connections opened in this context (and reopened by tasks it starts) read with
    ``FastFrameReceiver``."""
    install()
    token = _enabled.set(True)
    try:
        yield
    finally:
        _enabled.reset(token)


def _receiver(reader: Any) -> aiormq.connection.FrameReceiver:
    return FastFrameReceiver(reader) if _enabled.get() else _StockReceiver(reader)


def install() -> None:
    """Put the per-connection chooser in place of aiormq's ``FrameReceiver`` (once)."""
    # aiormq builds its receiver by this module-level name in Connection.connect; the stand-in
    # picks per connection, so outside fast_frames() nothing changes. Only aiormq's own class is
    # replaced: a wrapper someone put there since (a test watching connections) stays.
    if aiormq.connection.FrameReceiver is _StockReceiver:
        aiormq.connection.FrameReceiver = _receiver  # type: ignore[assignment,misc]


class FastFrameReceiver(_StockReceiver):
    """aiormq's ``FrameReceiver``, chunked: one socket read yields every frame it completes."""

    def __init__(self, reader: Any) -> None:
        super().__init__(reader)
        self._ready: deque[Received] = deque()
        self._rest = b""

    async def __anext__(self) -> Received:
        ready = self._ready
        if ready:
            return ready.popleft()
        reader = self.reader
        while True:
            try:
                chunk = await reader.read(READ_SIZE)
            except OSError as exc:
                raise AMQPConnectionError(f"Server communication error: {exc!r}") from exc
            if not chunk:
                if self._rest:
                    raise AMQPConnectionError(
                        f"Server connection unexpectedly closed with {len(self._rest)} bytes of a frame read"
                    )
                raise StopAsyncIteration
            data = self._rest + chunk if self._rest else chunk
            used = split_frames(data, ready)
            self._rest = data[used:]
            if ready:
                return ready.popleft()


def split_frames(data: bytes, into: deque[Received]) -> int:
    """Append every complete frame at the start of ``data`` to ``into``; return the bytes used."""
    offset, size = 0, len(data)
    while size - offset >= 8:
        kind, channel, length = _FRAME_HEADER.unpack_from(data, offset)
        end = offset + 7 + length
        if end >= size:
            break
        if data[end] != _FRAME_END:
            raise InvalidFrameError(f"frame on channel {channel} does not end with 0xCE")
        try:
            frame = _decode(kind, data[offset + 7 : end])
        except (IndexError, ValueError, struct.error):
            frame = None
        if frame is None:
            frame = _stock(data[offset : end + 1])
        into.append((end + 1 - offset, channel, frame))
        offset = end + 1
    return offset


def _stock(frame: bytes) -> Any:
    try:
        return pamqp.frame.unmarshal(frame)[2]
    except PAMQPException as exc:
        raise InvalidFrameError(str(exc)) from exc


def _decode(kind: int, payload: bytes) -> Any:
    """The frame, or None to leave it to pamqp. Decoders read only ``payload`` (a copy), so a
    malformed frame fails or truncates as it would in pamqp rather than read the next one."""
    if kind == 3:
        return ContentBody(payload)
    if kind == 1:
        return _method(payload, 0)
    if kind == 2:
        return _content_header(payload, 0)
    if kind == 8 and not payload:
        return Heartbeat()
    return None


def _method(data: bytes, at: int) -> Any:
    (index,) = _METHOD_INDEX.unpack_from(data, at)
    at += 4
    if index == _DELIVER:
        n = data[at]
        consumer_tag = data[at + 1 : at + 1 + n].decode()
        at += 1 + n
        tag, bits = _TAG_AND_BITS.unpack_from(data, at)
        at += 9
        n = data[at]
        exchange = data[at + 1 : at + 1 + n].decode()
        at += 1 + n
        n = data[at]
        deliver = _Deliver.__new__(_Deliver)
        deliver.consumer_tag = consumer_tag
        deliver.delivery_tag = tag
        deliver.redelivered = bool(bits & 1)
        deliver.exchange = exchange
        deliver.routing_key = data[at + 1 : at + 1 + n].decode()
        return deliver
    if index == _ACK:
        tag, bits = _TAG_AND_BITS.unpack_from(data, at)
        ack = _Ack.__new__(_Ack)
        ack.delivery_tag = tag
        ack.multiple = bool(bits & 1)
        return ack
    if index == _NACK:
        tag, bits = _TAG_AND_BITS.unpack_from(data, at)
        nack = _Nack.__new__(_Nack)
        nack.delivery_tag = tag
        nack.multiple = bool(bits & 1)
        nack.requeue = bool(bits & 2)
        return nack
    return None


def _content_header(data: bytes, at: int) -> ContentHeader | None:
    class_id, weight, body_size, flags = _CONTENT_HEADER.unpack_from(data, at)
    if class_id != _BASIC_CLASS or flags & 1:  # another class, or a second flag word
        return None
    header = ContentHeader.__new__(ContentHeader)
    header.class_id = class_id
    header.weight = weight
    header.body_size = body_size
    header.properties = _properties(data, at + 14, flags)
    return header


def _short_str(data: bytes, at: int) -> tuple[str, int]:
    n = data[at]
    return data[at + 1 : at + 1 + n].decode(), at + 1 + n


def _properties(data: bytes, at: int, flags: int) -> commands.Basic.Properties:
    """Basic.Properties as laid out by ``properties.LAYOUT``; an absent property is None
    (cluster_id ''), as pamqp leaves it."""
    p = _Properties.__new__(_Properties)
    value: Any
    for name, bit, kind in LAYOUT:
        if not flags & bit:
            value = "" if name == "cluster_id" else None
        elif kind == "shortstr":
            value, at = _short_str(data, at)
        elif kind == "table":
            value, at = _table(data, at)
        elif kind == "octet":
            value = data[at]
            at += 1
        else:  # timestamp
            value = _timestamp(_U64.unpack_from(data, at)[0])
            at += 8
        setattr(p, name, value)
    return p


def _timestamp(value: float) -> datetime:
    if value > 0xFFFFFFFF:  # as pamqp: past 2106 it is milliseconds
        value /= 1000.0
    return datetime.fromtimestamp(value, tz=UTC)


def _table(data: bytes, at: int) -> tuple[dict[str, Any], int]:
    """A field table; the common value types by hand, the rest through pamqp's decoder."""
    (length,) = _U32.unpack_from(data, at)
    at += 4
    stop = at + length
    if stop > len(data):
        raise ValueError("field table longer than its frame")
    table: dict[str, Any] = {}
    while at < stop:
        n = data[at]
        key = data[at + 1 : at + 1 + n].decode()
        at += 1 + n
        kind = data[at]
        at += 1
        value: Any
        if kind == 0x53:  # S: long string, bytes when not UTF-8 (as pamqp)
            (n,) = _U32.unpack_from(data, at)
            raw = data[at + 4 : at + 4 + n]
            at += 4 + n
            try:
                value = raw.decode()
            except UnicodeDecodeError:
                value = raw
        elif kind == 0x6C:  # l: signed 64-bit
            (value,) = _I64.unpack_from(data, at)
            at += 8
        elif kind == 0x49:  # I: signed 32-bit
            (value,) = _I32.unpack_from(data, at)
            at += 4
        elif kind == 0x74:  # t: boolean
            value = bool(data[at])
            at += 1
        elif kind == 0x46:  # F: nested table
            value, at = _table(data, at)
        else:
            used, value = decode.embedded_value(data[at - 1 : stop])
            at += used - 1
        table[key] = value
    if at != stop:
        raise ValueError("field table entries overrun its length")
    return table, stop


__all__ = ["READ_SIZE", "FastFrameReceiver", "fast_frames", "install", "split_frames"]
