"""Wakes subscribers when the head of the store moves, without polling in a tight loop."""

from __future__ import annotations

import asyncio
import contextlib


class HeadSignal:
    """Tracks the highest position known to be committed and wakes waiters past it.

    Appends in this process call :meth:`advance`; adapters that see other processes' writes
    (PostgreSQL LISTEN, SQLite polling) call it too.
    """

    def __init__(self) -> None:
        self._head = 0
        self._event = asyncio.Event()

    @property
    def head(self) -> int:
        return self._head

    def advance(self, position: int | None = None) -> None:
        """Record a new head (or just "something changed" when ``position`` is unknown)."""
        if position is not None and position <= self._head:
            return
        if position is not None:
            self._head = position
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, after_position: int, timeout: float) -> None:
        if self._head > after_position:
            return
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
