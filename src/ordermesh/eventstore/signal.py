"""Wakes subscribers when the head of the store moves, without polling in a tight loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable

log = logging.getLogger("ordermesh.eventstore")


class HeadSignal:
    """Tracks the highest position known to be committed and wakes waiters past it.

    Appends in this process call :meth:`advance`; adapters that see other processes' writes
    (PostgreSQL LISTEN) call it too. With ``poll`` (a store's head query), one task per signal
    asks it every ``interval`` seconds while anyone waits, and wakes everyone when the head moved:
    a thousand idle subscribers cost one query per interval, not a thousand (SQLite has no
    cross-process signal; on PostgreSQL it is the safety net for a lost NOTIFY).
    """

    def __init__(self, poll: Callable[[], Awaitable[int]] | None = None, interval: float = 0.25) -> None:
        self._head = 0
        self._event = asyncio.Event()
        self._poll = poll
        self._interval = interval
        self._waiters = 0
        self._poller: asyncio.Task[None] | None = None

    @property
    def head(self) -> int:
        return self._head

    @property
    def waiters(self) -> int:
        return self._waiters

    @property
    def polling(self) -> bool:
        return self._poller is not None and not self._poller.done()

    def advance(self, position: int | None = None) -> None:
        """Record a new head (or just "something changed" when ``position`` is unknown)."""
        if position is not None and position <= self._head:
            return
        if position is not None:
            self._head = position
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, after_position: int, timeout: float) -> None:
        """Return once the head passed ``after_position`` (or may have), or after ``timeout``
        seconds (``math.inf``: no timer at all)."""
        if self._head > after_position:
            return
        event = self._event
        self._waiters += 1
        if self._poll is not None and not self.polling:
            self._poller = asyncio.create_task(self._polling(), name="eventstore-head-poller")
        try:
            if math.isinf(timeout):
                await event.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await event.wait()
        finally:
            self._waiters -= 1

    async def _polling(self) -> None:
        assert self._poll is not None
        while self._waiters:
            await asyncio.sleep(self._interval)
            try:
                head = await self._poll()
            except Exception as exc:  # the waiters' own reads will meet (and report) it
                log.debug("head poll failed: %s", exc)
                self.advance()
            else:
                self.advance(head)

    def close(self) -> None:
        """Stop polling (the store is closing)."""
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
