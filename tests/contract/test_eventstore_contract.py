"""The event store contract (``tests/contract/suites/eventstore.py``) on memory, SQLite and PostgreSQL."""

from __future__ import annotations

from tests.contract.suites.eventstore import EventStoreContract
from tests.helpers import OnMemory, OnPostgres, OnSqlite


class TestMemoryEventStore(OnMemory, EventStoreContract):
    pass


class TestSqliteEventStore(OnSqlite, EventStoreContract):
    pass


class TestPostgresEventStore(OnPostgres, EventStoreContract):
    pass
