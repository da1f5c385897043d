"""The outbox relay's contract (``tests/contract/suites/outbox_relay.py``) on memory, SQLite and
PostgreSQL."""

from __future__ import annotations

from tests.contract.suites.outbox_relay import OutboxRelayContract
from tests.helpers import OnMemory, OnPostgres, OnSqlite


class TestMemoryOutboxRelay(OnMemory, OutboxRelayContract):
    pass


class TestSqliteOutboxRelay(OnSqlite, OutboxRelayContract):
    pass


class TestPostgresOutboxRelay(OnPostgres, OutboxRelayContract):
    pass
