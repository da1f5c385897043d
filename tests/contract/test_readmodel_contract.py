"""The read model contract (``tests/contract/suites/readmodel.py``) on memory, SQLite and
PostgreSQL, and PostgreSQL's own migration of a table made before ``scan``."""

from __future__ import annotations

from ordermesh.db import connect
from ordermesh.readmodel.sql import SqlDocStore
from tests.contract.suites.readmodel import ReadModelContract
from tests.helpers import OnMemory, OnPostgres, OnSqlite


class TestMemoryReadModel(OnMemory, ReadModelContract):
    pass


class TestSqliteReadModel(OnSqlite, ReadModelContract):
    pass


class TestPostgresReadModel(OnPostgres, ReadModelContract):
    async def test_a_postgres_table_made_before_scan_moves_its_keys_to_byte_order(
        self, database_url: str
    ) -> None:
        db = await connect(database_url)
        try:
            await db.execute(
                "CREATE TABLE rm_docs (model text NOT NULL, generation integer NOT NULL, "
                'key text COLLATE "POSIX" NOT NULL, body bytea NOT NULL, '
                "PRIMARY KEY (model, generation, key))"
            )
            await db.execute("INSERT INTO rm_docs VALUES ('m', 1, 'k', '\\x7b7d')")
            store = await SqlDocStore.open(db)
            await SqlDocStore.open(db)  # and again: the migration is idempotent
            collation = await db.fetchrow(
                "SELECT c.collname FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation "
                "WHERE a.attrelid = 'rm_docs'::regclass AND a.attname = 'key'"
            )
            assert collation is not None and collation[0] == "C"
            assert await store.get_in("m", 1, "k") == b"{}"
        finally:
            await db.close()
