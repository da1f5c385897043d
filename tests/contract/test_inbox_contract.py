"""The inbox contract (``tests/contract/suites/inbox.py``) on memory, SQLite and PostgreSQL."""

from __future__ import annotations

from tests.contract.suites.inbox import InboxContract
from tests.helpers import OnMemory, OnPostgres, OnSqlite


class TestMemoryInbox(OnMemory, InboxContract):
    pass


class TestSqliteInbox(OnSqlite, InboxContract):
    pass


class TestPostgresInbox(OnPostgres, InboxContract):
    pass
