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
