"""Document store on SQLite or PostgreSQL, in the event store's own database, so a projection's
documents and its checkpoint commit together.

Keys compare byte by byte on both (SQLite's BINARY, PostgreSQL's "C" collation): a ``scan`` is a
range over the primary key, and its order is the same as in memory whatever the database's locale.
"""

from __future__ import annotations

from collections.abc import Mapping

from ordermesh.db import SqlDb, migrate
from ordermesh.readmodel.port import ModelState, prefix_end

_BODY = {"postgres": "bytea", "sqlite": "BLOB"}
_KEY = {"postgres": 'text COLLATE "C"', "sqlite": "text"}
# Tables made before ``scan`` have the database's collation on rm_docs.key (a locale's order is
# neither stable nor byte-wise): move them to "C" once; that rebuilds the primary key index.
_KEY_TO_C = """DO $$ BEGIN
    IF (SELECT c.collname FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation
        WHERE a.attrelid = 'rm_docs'::regclass AND a.attname = 'key') <> 'C' THEN
        ALTER TABLE rm_docs ALTER COLUMN key TYPE text COLLATE "C";
    END IF;
END $$"""


def _ddl(dialect: str) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS rm_docs (
            model text NOT NULL, generation integer NOT NULL, key {_KEY[dialect]} NOT NULL,
            body {_BODY[dialect]} NOT NULL,
            PRIMARY KEY (model, generation, key))""",
        *([_KEY_TO_C] if dialect == "postgres" else []),
        """CREATE TABLE IF NOT EXISTS rm_checkpoints (
            model text NOT NULL, generation integer NOT NULL, position bigint NOT NULL,
            PRIMARY KEY (model, generation))""",
        """CREATE TABLE IF NOT EXISTS rm_live (
            model text PRIMARY KEY, generation integer NOT NULL)""",
    ]


class SqlDocStore:
    def __init__(self, db: SqlDb) -> None:
        self.db = db
        self._known: set[str] = set()

    @classmethod
    async def open(cls, db: SqlDb) -> SqlDocStore:
        await migrate(db, {"postgres": _ddl("postgres"), "sqlite": _ddl("sqlite")})
        return cls(db)

    async def _ensure(self, model: str) -> None:
        if model in self._known:
            return
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO rm_live (model, generation) VALUES ($1, 1) ON CONFLICT DO NOTHING", model
            )
            await tx.execute(
                "INSERT INTO rm_checkpoints (model, generation, position) VALUES ($1, 1, 0) "
                "ON CONFLICT DO NOTHING",
                model,
            )
        self._known.add(model)

    async def get(self, model: str, key: str) -> bytes | None:
        row = await self.db.fetchrow(
            "SELECT d.body FROM rm_live l JOIN rm_docs d "
            "ON d.model = l.model AND d.generation = l.generation AND d.key = $2 WHERE l.model = $1",
            model,
            key,
        )
        return bytes(row[0]) if row else None

    async def get_in(self, model: str, generation: int, key: str) -> bytes | None:
        row = await self.db.fetchrow(
            "SELECT body FROM rm_docs WHERE model = $1 AND generation = $2 AND key = $3",
            model,
            generation,
            key,
        )
        return bytes(row[0]) if row else None

    async def scan(
        self, model: str, prefix: str, after: str | None = None, limit: int = 100
    ) -> list[tuple[str, bytes]]:
        # One statement, so a generation swap cannot fall between finding the live generation and
        # reading it; the scalar subquery leaves a plain range on the primary key to both planners.
        start, op = (after, ">") if after is not None and after >= prefix else (prefix, ">=")
        end = prefix_end(prefix)
        sql = (
            "SELECT key, body FROM rm_docs WHERE model = $1 "
            "AND generation = (SELECT generation FROM rm_live WHERE model = $1) "
            f"AND key {op} $2 {'AND key < $4 ' if end is not None else ''}ORDER BY key LIMIT $3"
        )
        args = (model, start, limit, end) if end is not None else (model, start, limit)
        rows = await self.db.fetch_page(sql, *args)  # bounded by ``limit``
        return [(str(r[0]), bytes(r[1])) for r in rows]

    async def state(self, model: str) -> ModelState:
        await self._ensure(model)
        row = await self.db.fetchrow(
            "SELECT l.generation, c.position FROM rm_live l JOIN rm_checkpoints c "
            "ON c.model = l.model AND c.generation = l.generation WHERE l.model = $1",
            model,
        )
        assert row is not None, "rm_live and rm_checkpoints are created together"
        return ModelState(int(row[0]), int(row[1]))

    async def position(self, model: str, generation: int) -> int | None:
        row = await self.db.fetchrow(
            "SELECT position FROM rm_checkpoints WHERE model = $1 AND generation = $2", model, generation
        )
        return int(row[0]) if row else None

    async def commit(
        self,
        model: str,
        generation: int,
        expected_position: int,
        new_position: int,
        docs: Mapping[str, bytes | None],
    ) -> bool:
        async with self.db.transaction() as tx:
            moved = await tx.fetch(
                "UPDATE rm_checkpoints SET position = $4 "
                "WHERE model = $1 AND generation = $2 AND position = $3 RETURNING position",
                model,
                generation,
                expected_position,
                new_position,
            )
            if not moved:
                return False
            puts = [(model, generation, k, v) for k, v in docs.items() if v is not None]
            deletes = [(model, generation, k) for k, v in docs.items() if v is None]
            if puts:
                await tx.executemany(
                    "INSERT INTO rm_docs (model, generation, key, body) VALUES ($1, $2, $3, $4) "
                    "ON CONFLICT (model, generation, key) DO UPDATE SET body = excluded.body",
                    puts,
                )
            if deletes:
                await tx.executemany(
                    "DELETE FROM rm_docs WHERE model = $1 AND generation = $2 AND key = $3", deletes
                )
        return True

    async def start_generation(self, model: str) -> int:
        await self._ensure(model)
        async with self.db.transaction() as tx:
            row = await tx.fetchrow("SELECT max(generation) FROM rm_checkpoints WHERE model = $1", model)
            gen = int(row[0] if row and row[0] is not None else 1) + 1
            await tx.execute(
                "INSERT INTO rm_checkpoints (model, generation, position) VALUES ($1, $2, 0)", model, gen
            )
        return gen

    async def activate(self, model: str, generation: int) -> None:
        async with self.db.transaction() as tx:
            await tx.execute("UPDATE rm_live SET generation = $2 WHERE model = $1", model, generation)
            await tx.execute("DELETE FROM rm_docs WHERE model = $1 AND generation <> $2", model, generation)
            await tx.execute(
                "DELETE FROM rm_checkpoints WHERE model = $1 AND generation <> $2", model, generation
            )
