"""The saga store and engine contract (``tests/contract/suites/saga.py``) on memory, SQLite and PostgreSQL."""

from __future__ import annotations

from tests.contract.suites.saga import SagaStoreContract
from tests.helpers import OnMemory, OnPostgres, OnSqlite


class TestMemorySagaStore(OnMemory, SagaStoreContract):
    pass


class TestSqliteSagaStore(OnSqlite, SagaStoreContract):
    pass


class TestPostgresSagaStore(OnPostgres, SagaStoreContract):
    pass
