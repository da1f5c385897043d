"""Deliveries straight from the connection's reader to the consumer, past aiormq's channel queue.

aiormq hands every frame of a channel to an ``asyncio.Queue`` that the channel's reader task
drains; a delivery (method, header, body frames) then costs three queue hops, a ``BytesIO`` and
one task that aiormq wraps and tracks per message: a quarter of a consumer's event-loop time
(py-spy, ``bench messaging``), as much as our whole handler path. ``DeliveryTap`` stands in
for that queue on a consumer's own channel: frames of deliveries to the consumer tags it was
told about are assembled as they arrive and handed to a plain callback, synchronously and in
delivery order; every other frame (confirms, cancels, channel close, replies) goes on to the
original queue, which the channel's reader keeps reading.

The tap is put in place before ``basic_consume`` with a consumer tag chosen up front, so not
one delivery of that consumer takes the other road (the order of deliveries is what coalesced
acks rely on). Tied to aiormq 7.x's channel (a ``frames`` queue written by the connection's
reader with ``put`` and read by the channel with ``get``/``task_done``): ``fastpath.install``
uses it on the verified minor versions alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

OnDelivery = Callable[[DeliveredMessage], None]


class DeliveryTap:
    """A channel's frame queue, with the deliveries of chosen consumers taken out on the way."""

    def __init__(self, channel: AbstractChannel, queue: asyncio.Queue[Any]) -> None:
        self._channel = channel
        self._queue = queue
        self._consumers: dict[str, OnDelivery] = {}
        self._deliver: Basic.Deliver | None = None  # a tapped delivery being assembled
        self._header: ContentHeader | None = None
        self._parts: list[bytes] = []
        self._received = 0

    @classmethod
    def on(cls, channel: AbstractChannel) -> DeliveryTap:
        """The tap on ``channel``, put in place on first use."""
        frames = channel.frames
        if isinstance(frames, cls):
            return frames
        tap = cls(channel, frames)
        channel.frames = tap  # type: ignore[assignment]  # duck-typed: put, get, task_done
        return tap

    def add(self, consumer_tag: str, on_delivery: OnDelivery) -> None:
        self._consumers[consumer_tag] = on_delivery

    def discard(self, consumer_tag: str) -> None:
        self._consumers.pop(consumer_tag, None)

    # --- the queue's side that the connection's reader uses -----------------------------------

    async def put(self, item: tuple[int, Any]) -> None:
        passed = self._tap(item)
        if passed is not None:
            # aiormq bounds a channel's queue (10 frames): wait for room, as its reader would.
            await self._queue.put(passed)

    def put_nowait(self, item: tuple[int, Any]) -> None:
        passed = self._tap(item)
        if passed is not None:
            self._queue.put_nowait(passed)

    def _tap(self, item: tuple[int, Any]) -> tuple[int, Any] | None:
        """Take the frame if it belongs to a tapped delivery; otherwise what to pass on."""
        frame = item[1]
        if self._deliver is not None:
            return self._content(frame)
        if type(frame) is Basic.Deliver and frame.consumer_tag in self._consumers:
            self._deliver = frame
            return None
        return item

    def _content(self, frame: Any) -> tuple[int, Any] | None:
        if self._header is None:
            if type(frame) is not ContentHeader:
                return self._broken(frame)
            self._header = frame
        elif type(frame) is ContentBody:
            self._parts.append(frame.value)
            self._received += len(frame.value)
        else:
            return self._broken(frame)
        if self._received >= self._header.body_size:
            self._complete()
        return None

    def _complete(self) -> None:
        deliver, header, parts = self._deliver, self._header, self._parts
        assert deliver is not None and header is not None
        self._deliver, self._header, self._parts, self._received = None, None, [], 0
        on_delivery = self._consumers.get(deliver.consumer_tag)  # type: ignore[arg-type]
        if on_delivery is not None:
            body = parts[0] if len(parts) == 1 else b"".join(parts)
            on_delivery(DeliveredMessage(delivery=deliver, header=header, body=body, channel=self._channel))

    def _broken(self, frame: Any) -> tuple[int, Any]:
        # Not the frames AMQP promises after a Basic.Deliver: drop the half delivery (unacked, the
        # broker redelivers it when the channel closes) and let aiormq's reader see the frame.
        self._deliver, self._header, self._parts, self._received = None, None, [], 0
        return (0, frame)

    # --- the side the channel's reader uses ---------------------------------------------------

    def get(self) -> Any:
        return self._queue.get()

    def task_done(self) -> None:
        self._queue.task_done()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


__all__ = ["DeliveryTap", "OnDelivery"]
