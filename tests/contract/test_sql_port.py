"""The SQL port's adapters: what a caller sees when the database misbehaves."""

from __future__ import annotations

import pytest

from ordermesh.db import connect
from ordermesh.errors import InfrastructureError


@pytest.mark.postgres
async def test_a_postgresql_server_that_goes_away_is_an_infrastructure_error(pg_url: str) -> None:
    """A connection cut mid-transaction (a restart, a failover): 503 / UNAVAILABLE at the edges,
    never an unexpected exception; the pool replaces the connection for the next statement."""
    db = await connect(pg_url)
    try:
        with pytest.raises(InfrastructureError, match="is unavailable"):
            async with db.transaction() as tx:
                await tx.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        assert await db.fetchrow("SELECT 1") is not None
    finally:
        await db.close()


async def test_a_transaction_cancelled_at_any_point_leaves_the_next_one_free(sql_url: str) -> None:
    """A caller's deadline cancels a transaction while a statement of it runs in the driver's
    thread (seen in CI: the next transaction met "cannot start a transaction within a
    transaction", an INTERNAL). Whatever the point, nothing it wrote stays, and the next begins."""
    import asyncio

    db = await connect(sql_url)
    try:
        await db.execute("CREATE TABLE IF NOT EXISTS cancelled (x int)")

        async def write() -> None:
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO cancelled VALUES (1)")
                await tx.execute("INSERT INTO cancelled VALUES (1)")

        for turns in range(12):  # cancelled before, during and after each statement
            task = asyncio.create_task(write())
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO cancelled VALUES (2)")
        row = await db.fetchrow("SELECT count(*) FROM cancelled WHERE x = 1")
        assert row is not None and int(row[0]) % 2 == 0  # whole transactions only
        row = await db.fetchrow("SELECT count(*) FROM cancelled WHERE x = 2")
        assert row is not None and int(row[0]) == 12
    finally:
        await db.close()
