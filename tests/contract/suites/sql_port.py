"""The SQL port's adapters: what a caller sees when the database misbehaves.

To check an adapter, subclass ``SqlPortContract`` and give the subclass a ``database_url`` fixture:
a fresh database for each test (connected with ``ordermesh.db.connect``). ``OnSqlite`` and
``OnPostgres`` (``tests.helpers``) give the built-in ones.

    class TestSqliteSqlPort(OnSqlite, SqlPortContract):
        pass
"""

from __future__ import annotations

import asyncio

from ordermesh.db import connect


class SqlPortContract:
    """Every test a SQL port adapter must pass; a subclass gives ``database_url``."""

    async def test_a_transaction_cancelled_at_any_point_leaves_the_next_one_free(
        self, database_url: str
    ) -> None:
        """A caller's deadline cancels a transaction while a statement of it runs in the driver's
        thread (seen in CI: the next transaction met "cannot start a transaction within a
        transaction", an INTERNAL). Whatever the point, nothing it wrote stays, and the next begins."""
        db = await connect(database_url)
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
