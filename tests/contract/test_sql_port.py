"""The SQL port's contract (``tests/contract/suites/sql_port.py``) on SQLite and PostgreSQL, and
what only PostgreSQL can do to a caller: go away mid-transaction."""

from __future__ import annotations

import pytest

from ordermesh.db import connect
from ordermesh.errors import InfrastructureError
from tests.contract.suites.sql_port import SqlPortContract
from tests.helpers import OnPostgres, OnSqlite


class TestSqliteSqlPort(OnSqlite, SqlPortContract):
    pass


class TestPostgresSqlPort(OnPostgres, SqlPortContract):
    async def test_a_postgresql_server_that_goes_away_is_an_infrastructure_error(
        self, database_url: str
    ) -> None:
        """A connection cut mid-transaction (a restart, a failover): 503 / UNAVAILABLE at the edges,
        never an unexpected exception; the pool replaces the connection for the next statement."""
        db = await connect(database_url)
        try:
            with pytest.raises(InfrastructureError, match="is unavailable"):
                async with db.transaction() as tx:
                    await tx.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            assert await db.fetchrow("SELECT 1") is not None
        finally:
            await db.close()
