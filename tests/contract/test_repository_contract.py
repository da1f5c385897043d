"""The aggregate repository's contract (``tests/contract/suites/repository.py``) on memory, SQLite and
PostgreSQL."""

from __future__ import annotations

from tests.contract.suites.repository import RepositoryContract
from tests.helpers import OnMemory, OnPostgres, OnSqlite


class TestMemoryRepository(OnMemory, RepositoryContract):
    pass


class TestSqliteRepository(OnSqlite, RepositoryContract):
    pass


class TestPostgresRepository(OnPostgres, RepositoryContract):
    pass
