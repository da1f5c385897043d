"""A thin SQL port over SQLite (aiosqlite) and PostgreSQL (asyncpg).

Stores write their SQL once with ``$1``-style placeholders and call the few methods below; the
adapters hide placeholder syntax, connection pooling and SQLite's single-writer rule.
"""

from __future__ import annotations

from ordermesh.db.port import Row, SqlDb, Tx


async def connect(url: str) -> SqlDb:
    """Open ``sqlite:///path`` or ``postgresql://…``."""
    if url.startswith(("postgresql://", "postgres://")):
        from ordermesh.db.postgres import PostgresDb

        return await PostgresDb.open(url)
    if url.startswith("sqlite://"):
        from ordermesh.db.sqlite import SqliteDb

        # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute/path.db
        return await SqliteDb.open(url.removeprefix("sqlite:///"))
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://…")


async def migrate(db: SqlDb, statements: dict[str, list[str]]) -> None:
    """Run idempotent DDL for ``db.dialect`` in one transaction.

    PostgreSQL's ``CREATE … IF NOT EXISTS`` is not safe against a concurrent twin (two services
    starting at once), so the transaction first takes an advisory lock.
    """
    async with db.transaction() as tx:
        if db.dialect == "postgres":
            await tx.execute("SELECT pg_advisory_xact_lock(7355608)")
        for statement in statements[db.dialect]:
            await tx.execute(statement)


__all__ = ["Row", "SqlDb", "Tx", "connect", "migrate"]
