"""SQLite adapter: WAL, one writer connection behind a lock, a separate reader connection.

SQLite allows one writer at a time; funnelling every write of this process through one
connection (and a lock for multi-statement transactions) turns "database is locked" into an
orderly queue. Readers use their own connection, so under WAL they never wait for the writer.

Single statements do not take the lock unless a transaction holds it: aiosqlite runs a
connection's calls one at a time in submission order, so a statement queued while no transaction
is open runs before any later ``BEGIN``, never inside it, and concurrent appends queue up in the
writer thread back to back instead of waiting for one another's round trip to the event loop.

Single-row reads (``fetchrow``: primary-key lookups of read models, checkpoints, versions) run
on a plain ``sqlite3`` connection in the event loop's own thread. Such a read costs a few
microseconds from the page cache, while a hop to aiosqlite's thread and back costs tens, and
under load far more: the reply waits for the GIL behind the loop. Under WAL a reader never waits
for the writer; in the rare case SQLite still answers "busy", the read falls back to the thread.
Multi-row reads (pages of events) stay on the reader thread, where their decoding cannot stall
the loop.

Single writing statements outside a transaction (an event append, a checkpoint, an inbox
claim) run inline too, on a writer connection of their own, when commits do not fsync
(``synchronous=NORMAL``, the default here, or OFF): such a commit costs tens of microseconds,
the hop to the writer thread and back ~100 (measured: appends of 3 events, one writer, 5,900/s
through the thread). That connection never waits (``busy_timeout=0``): if another connection
holds the write lock, the statement goes to the writer thread instead, which waits its turn;
it checkpoints the WAL as SQLite does by default (every 1,000 pages), which stalls the loop
for ~3 ms every few hundred appends (measured: appends p99 0.2 ms, p99.9 2.9 ms, max 4 ms;
45,000 events/s against 18,000 through the thread). Checkpoints left to the writer thread could
not keep up while the loop wrote: the WAL grew past a gigabyte. ``synchronous=FULL``
keeps every write, and so every fsync, on the thread. Statements that run many
times (``executemany``) stay on the thread as well: a "busy" halfway through could not be
handed over without running the first half twice.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import aiosqlite

from ordermesh.db.port import Dialect, Row, Tx
from ordermesh.errors import InfrastructureError

_PLACEHOLDER = re.compile(r"\$(\d+)")


@lru_cache(maxsize=512)
def _sql(sql: str) -> str:
    # SQLite understands numbered ?NNN parameters; PostgreSQL-style $N maps onto them 1:1.
    return _PLACEHOLDER.sub(r"?\1", sql)


class _Conn:
    """Statement helpers over one aiosqlite connection."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(_sql(sql), args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(_sql(sql), rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return list(await self._conn.execute_fetchall(_sql(sql), args))

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        rows = await self._conn.execute_fetchall(_sql(sql), args)
        for row in rows:
            return row
        return None


_YIELD_EVERY = 0.001  # seconds of inline writes before a caller yields to the loop


def _busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


async def _wal(conn: aiosqlite.Connection, patience: float = 10.0) -> None:
    """``journal_mode=WAL``, again while the file is locked: processes opening one new file at
    once (``ordermesh up``'s services on the embedded broker) race to convert it, and SQLite
    answers "database is locked" at once to some of them, without waiting on the busy timeout."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + patience
    while True:
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or loop.time() >= give_up:
                raise
        await asyncio.sleep(0.05)


class SqliteDb:
    dialect: Dialect = "sqlite"

    def __init__(
        self,
        path: str,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        inline: sqlite3.Connection,
        inline_writer: sqlite3.Connection | None = None,
    ) -> None:
        self.path = path
        self._writer = _Conn(writer)
        self._reader = _Conn(reader)
        self._inline = inline
        self._inline_writer = inline_writer
        self._yielded = 0.0
        self._raw = (writer, reader)
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str, synchronous: str = "NORMAL") -> SqliteDb:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conns = []
        for _ in range(2):
            conn = await aiosqlite.connect(path, isolation_level=None)
            await conn.execute("PRAGMA busy_timeout=10000")
            await _wal(conn)
            await conn.execute(f"PRAGMA synchronous={synchronous}")
            await conn.execute("PRAGMA foreign_keys=ON")
            conns.append(conn)
        inline = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        inline.execute("PRAGMA busy_timeout=0")  # never block the event loop; fall back instead
        inline_writer = None
        if path != ":memory:" and synchronous.upper() in {"NORMAL", "OFF", "0", "1"}:
            inline_writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            for pragma in (
                "busy_timeout=0",
                f"synchronous={synchronous}",
                "foreign_keys=ON",
            ):
                inline_writer.execute(f"PRAGMA {pragma}")
        return cls(path, conns[0], conns[1], inline, inline_writer)

    def _write_inline(self, sql: str, args: Sequence[Any]) -> list[Row] | None:
        """Run one autocommit statement in the loop's thread; None when it has to go to the
        writer thread (no inline writer, a transaction of ours open, or the lock taken)."""
        conn = self._inline_writer
        if conn is None or self._lock.locked():
            return None
        try:
            rows: list[Row] = conn.execute(_sql(sql), args).fetchall()
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise
            return None
        return rows

    async def _fair(self) -> None:
        """Yield to the loop after inline writes, at least once a millisecond: a caller writing
        in a loop must not starve the other tasks. Not after every write: a loop iteration costs
        ~20 µs here (an epoll call), half an append."""
        now = time.monotonic()
        if now - self._yielded >= _YIELD_EVERY:
            self._yielded = now
            await asyncio.sleep(0)

    async def execute(self, sql: str, *args: Any) -> None:
        if self._write_inline(sql, args) is not None:
            await self._fair()
            return
        if self._lock.locked():  # a transaction owns the writer: wait for it (see module doc)
            async with self._lock:
                await self._writer.execute(sql, *args)
                return
        await self._writer.execute(sql, *args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        if self._lock.locked():
            async with self._lock:
                await self._writer.executemany(sql, rows)
                return
        await self._writer.executemany(sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return await self._reader.fetch(sql, *args)

    async def fetch_page(self, sql: str, *args: Any) -> list[Row]:
        # Inline like a point read: a page of a read model costs ~30-45 µs from the page cache,
        # the hop to the reader thread and back 135-225 µs (bench/http_orders.py's list).
        try:
            rows: list[Row] = self._inline.execute(_sql(sql), args).fetchall()
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise
            return await self._reader.fetch(sql, *args)
        return rows

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        try:
            row: Row | None = self._inline.execute(_sql(sql), args).fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            return await self._reader.fetchrow(sql, *args)
        return row

    async def write_fetch(self, sql: str, *args: Any) -> list[Row]:
        """A single writing statement whose RETURNING rows are wanted (autocommit, atomic)."""
        rows = self._write_inline(sql, args)
        if rows is not None:
            await self._fair()
            return rows
        if self._lock.locked():
            async with self._lock:
                return await self._writer.fetch(sql, *args)
        return await self._writer.fetch(sql, *args)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self._lock:
            # A statement handed to aiosqlite's thread runs even when its awaiting task is
            # cancelled (a client's deadline, a shutdown): a BEGIN, or a body's statement, may be
            # running as we leave. Whatever happens, roll back on the thread behind them, shielded,
            # before the lock goes to the next transaction: else it meets "cannot start a
            # transaction within a transaction".
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
                yield self._writer
            except BaseException:
                await asyncio.shield(self._rollback())
                raise
            await self._writer.execute("COMMIT")

    async def _rollback(self) -> None:
        try:
            await self._writer.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            if "no transaction is active" not in str(exc):  # the BEGIN never ran: nothing to undo
                raise

    async def ping(self) -> None:
        try:
            await self._reader.fetchrow("SELECT 1")
        except (sqlite3.Error, ValueError) as exc:
            raise InfrastructureError(f"sqlite {self.path}: {exc}") from exc

    async def close(self) -> None:
        if self._inline_writer is not None:
            self._inline_writer.close()
        self._inline.close()
        for conn in self._raw:
            await conn.close()
