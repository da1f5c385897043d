"""Tables of the SQL event store."""

from __future__ import annotations

from ordermesh.db import SqlDb, migrate

NOTIFY_CHANNEL = "ordermesh_events"

_POSTGRES = [
    """CREATE TABLE IF NOT EXISTS events (
        stream_id      text        NOT NULL,
        version        integer     NOT NULL,
        position       bigint      NOT NULL UNIQUE,
        event_id       text        NOT NULL,
        type           text        NOT NULL,
        schema_version integer     NOT NULL,
        data           jsonb       NOT NULL,
        metadata       jsonb       NOT NULL,
        occurred_at    timestamptz NOT NULL,
        PRIMARY KEY (stream_id, version)
    )""",
    """CREATE TABLE IF NOT EXISTS event_head (
        id       smallint PRIMARY KEY CHECK (id = 1),
        position bigint   NOT NULL
    )""",
    "INSERT INTO event_head (id, position) VALUES (1, 0) ON CONFLICT DO NOTHING",
    """CREATE TABLE IF NOT EXISTS snapshots (
        stream_id text PRIMARY KEY,
        version   integer NOT NULL,
        type      text NOT NULL,
        state     jsonb NOT NULL,
        taken_at  timestamptz NOT NULL
    )""",
    # Appends send their NOTIFY from the append statement itself (see ``eventstore.sql``); the
    # statement trigger that used to send it cost a PL/pgSQL call and a lookup per append.
    "DROP TRIGGER IF EXISTS ordermesh_events_notify ON events",
    "DROP FUNCTION IF EXISTS ordermesh_notify_events()",
]

_SQLITE = [
    """CREATE TABLE IF NOT EXISTS events (
        stream_id      TEXT    NOT NULL,
        version        INTEGER NOT NULL,
        position       INTEGER NOT NULL UNIQUE,
        event_id       TEXT    NOT NULL,
        type           TEXT    NOT NULL,
        schema_version INTEGER NOT NULL,
        data           TEXT    NOT NULL,
        metadata       TEXT    NOT NULL,
        occurred_at    INTEGER NOT NULL,
        PRIMARY KEY (stream_id, version)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS snapshots (
        stream_id TEXT PRIMARY KEY,
        version   INTEGER NOT NULL,
        type      TEXT NOT NULL,
        state     TEXT NOT NULL,
        taken_at  INTEGER NOT NULL
    )""",
]


async def migrate_eventstore(db: SqlDb) -> None:
    await migrate(db, {"postgres": _POSTGRES, "sqlite": _SQLITE})
