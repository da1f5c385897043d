"""The SQL port shared by the SQLite and PostgreSQL adapters."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol


class Row(Protocol):
    """A result row: tuples (SQLite) and asyncpg Records both index by column number."""

    def __getitem__(self, index: int, /) -> Any: ...

    def __len__(self) -> int: ...


Dialect = Literal["sqlite", "postgres"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class Tx(Protocol):
    """Statements that run inside one transaction (or autocommit, on :class:`SqlDb`)."""

    async def execute(self, sql: str, *args: Any) -> None: ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...


class SqlDb(Tx, Protocol):
    dialect: Dialect

    async def fetch_page(self, sql: str, *args: Any) -> list[Row]:
        """A bounded read (one page: a few hundred rows at most, by the statement's LIMIT). It may
        run where a point read runs (SQLite: in the event loop's thread): callers promise the
        bound, so it cannot stall the loop the way a long read would."""
        ...

    async def write_fetch(self, sql: str, *args: Any) -> list[Row]:
        """One writing statement, atomic on its own, returning its RETURNING rows."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """A write transaction; SQLite takes its write lock at the start (BEGIN IMMEDIATE)."""
        ...

    async def ping(self) -> None:
        """Raise ``InfrastructureError`` when the database does not answer."""
        ...

    async def close(self) -> None: ...


def ts_param(dialect: Dialect, value: datetime) -> Any:
    """A timestamp as the dialect stores it: SQLite keeps integer microseconds since the epoch."""
    if dialect == "sqlite":
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return (aware - _EPOCH) // _MICROSECOND
    return value


def ts_value(dialect: Dialect, raw: Any) -> datetime:
    if dialect == "sqlite":
        return _EPOCH + int(raw) * _MICROSECOND
    if not isinstance(raw, datetime):
        raise TypeError(f"expected a timestamp from PostgreSQL, got {type(raw).__name__}")
    stamp: datetime = raw
    return stamp
