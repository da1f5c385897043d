"""The outbox table's contract (``tests/contract/suites/table_outbox.py``) on SQLite and PostgreSQL."""

from __future__ import annotations

from tests.contract.suites.table_outbox import TableOutboxContract
from tests.helpers import OnPostgres, OnSqlite


class TestSqliteTableOutbox(OnSqlite, TableOutboxContract):
    pass


class TestPostgresTableOutbox(OnPostgres, TableOutboxContract):
    pass
