"""PostgreSQL adapter over an asyncpg pool, with LISTEN for cross-process wake-ups."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from ordermesh.config import redact_urls
from ordermesh.db.port import Dialect, Row, Tx
from ordermesh.errors import InfrastructureError


class _Conn:
    def __init__(self, conn: asyncpg.Connection | PoolConnectionProxy) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(sql, *args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return list(await self._conn.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        row: Row | None = await self._conn.fetchrow(sql, *args)
        return row


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Pool release hook that skips asyncpg's reset query.

    By default every release runs ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` (an extra round trip after every statement, about a third of an append). This
    adapter leaves no session state behind: single statements run in autocommit, transactions are
    managed (asyncpg still rolls back an unfinished one on release), advisory locks are
    transaction-scoped and LISTEN has its own connection. Callers must not ``SET`` session
    variables or take session-level advisory locks through the pool.
    """


def _json_param(value: Any) -> str:
    # JSON text passes through unchanged (what callers have always bound); other values are dumped.
    return value if isinstance(value, str) else orjson.dumps(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    """Have asyncpg parse ``jsonb`` (and ``json``) with orjson while it decodes a row, so reads get
    dicts (and lists…) straight from the driver instead of a ``str`` per value to parse afterwards.
    Parameters still take JSON text as before (or any value orjson can dump)."""
    for type_name in ("jsonb", "json"):
        await conn.set_type_codec(
            type_name, schema="pg_catalog", encoder=_json_param, decoder=orjson.loads, format="text"
        )


# The server is gone or refuses for now (not: the statement is wrong).
_DOWN = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
)


def _search_path(url: str) -> str | None:
    """The one schema a URL's ``search_path`` names (None for none, or for a list)."""
    from urllib.parse import parse_qsl, urlsplit

    path = next((v for k, v in parse_qsl(urlsplit(url).query) if k == "search_path"), "")
    name = path.strip().strip('"')
    return name if name and name.replace("_", "").isalnum() else None


class PostgresDb:
    dialect: Dialect = "postgres"

    def __init__(self, url: str, pool: asyncpg.Pool) -> None:
        self.url = url
        self._pool = pool
        self._listener: asyncpg.Connection | None = None

    @classmethod
    async def open(cls, url: str, min_size: int = 2, max_size: int = 10) -> PostgresDb:
        try:
            pool = await asyncpg.create_pool(
                url, min_size=min_size, max_size=max_size, init=_init_connection, reset=_keep_session
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise InfrastructureError(f"cannot connect to PostgreSQL at {redact_urls(url)}: {exc}") from exc
        db = cls(url, pool)
        schema = _search_path(url)
        if schema:
            await db._create_schema(schema)
        return db

    async def _create_schema(self, schema: str) -> None:
        """A service's own schema (database per service, one server): created on first start.
        Two services starting at once would race ``IF NOT EXISTS``; the advisory lock orders them."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(7355609)")
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')

    # Every statement: a server that went away (restart, failover, network) is an
    # InfrastructureError, which the edges answer with 503 / UNAVAILABLE, not a 500. In 3.11 a
    # try block costs nothing until it catches.

    async def execute(self, sql: str, *args: Any) -> None:
        try:
            await self._pool.execute(sql, *args)
        except _DOWN as exc:
            raise self._down(exc) from exc

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            await self._pool.executemany(sql, rows)
        except _DOWN as exc:
            raise self._down(exc) from exc

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        try:
            return list(await self._pool.fetch(sql, *args))
        except _DOWN as exc:
            raise self._down(exc) from exc

    async def fetch_page(self, sql: str, *args: Any) -> list[Row]:
        return await self.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        try:
            row: Row | None = await self._pool.fetchrow(sql, *args)
        except _DOWN as exc:
            raise self._down(exc) from exc
        return row

    async def write_fetch(self, sql: str, *args: Any) -> list[Row]:
        try:
            return list(await self._pool.fetch(sql, *args))
        except _DOWN as exc:
            raise self._down(exc) from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                yield _Conn(conn)
        except _DOWN as exc:
            raise self._down(exc) from exc

    def _down(self, exc: BaseException) -> InfrastructureError:
        return InfrastructureError(
            f"PostgreSQL at {redact_urls(self.url)} is unavailable: {type(exc).__name__}: {exc}"
        )

    async def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(payload)`` for every NOTIFY on ``channel`` (one dedicated connection)."""
        if self._listener is None:
            self._listener = await asyncpg.connect(self.url)

        def on_notify(_conn: object, _pid: int, _channel: str, payload: object) -> None:
            callback(str(payload))

        await self._listener.add_listener(channel, on_notify)

    async def ping(self) -> None:
        try:
            await self._pool.fetchval("SELECT 1", timeout=2)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise InfrastructureError(f"PostgreSQL at {redact_urls(self.url)}: {exc}") from exc

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
        await self._pool.close()
