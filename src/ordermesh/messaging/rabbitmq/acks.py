"""Acknowledgements, coalesced: one ``basic.ack(multiple)`` frame for a run of handled messages.

A consumer with a prefetch of hundreds finishes messages in bursts (the inbox commits them in
one transaction). Acking each costs a frame, a write and a future; acking the longest prefix of
finished deliveries with one ``multiple`` ack costs one. Messages finished out of order behind
a slow one are acked individually in the same flush, so one slow handler never holds back the
acks of the others (nor, through the prefetch window, the whole consumer).

Flushes run on the next loop iteration after an ack is requested, so every handler finishing in
the same iteration shares a frame. Delivery tags belong to one channel: a channel that closed
(and was reopened by the robust connection) gets a fresh ``Acks``; the old tags are void and the
broker redelivers those messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

import aiormq
from aiormq.abc import AbstractChannel

log = logging.getLogger("ordermesh.messaging.rabbitmq")

_GONE = (aiormq.exceptions.AMQPError, ConnectionError, OSError)


class Acks:
    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel
        self._outstanding: deque[int] = deque()  # delivery order
        self._finished: set[int] = set()
        self._flush: asyncio.Handle | None = None
        self._writes: set[asyncio.Task[None]] = set()

    def delivered(self, tag: int) -> None:
        self._outstanding.append(tag)

    def ack(self, tag: int) -> None:
        self._finished.add(tag)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self._send)

    async def nack(self, tag: int) -> None:
        """Give the message back to the broker now (not coalesced: it is the rare path)."""
        with contextlib.suppress(ValueError):
            self._outstanding.remove(tag)
        with contextlib.suppress(*_GONE):
            await self.channel.basic_nack(tag, requeue=True)

    def _send(self) -> None:
        self._flush = None
        last = None
        while self._outstanding and self._outstanding[0] in self._finished:
            last = self._outstanding.popleft()
            self._finished.discard(last)
        if last is not None:
            self._write(last, multiple=True)
        for tag in sorted(self._finished):  # finished behind a slower one
            self._outstanding.remove(tag)
            self._write(tag, multiple=False)
        self._finished.clear()

    def _write(self, tag: int, *, multiple: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._ack(tag, multiple))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _ack(self, tag: int, multiple: bool) -> None:
        try:
            await self.channel.basic_ack(tag, multiple=multiple, wait=False)
        except _GONE as exc:
            # The channel is gone: the broker requeues every unacked message of it.
            log.info("ack of delivery %d lost with its channel (%s); it will be redelivered", tag, exc)

    async def drain(self) -> None:
        """Send what is pending and wait until it is written (before closing the channel)."""
        if self._flush is not None:
            self._flush.cancel()
            self._send()
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
