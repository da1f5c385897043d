"""The inventory store contract (``tests/contract/suites/inventory_store.py``) on SQLite and PostgreSQL."""

from __future__ import annotations

from tests.contract.suites.inventory_store import InventoryStoreContract
from tests.helpers import OnPostgres, OnSqlite


class TestSqliteInventoryStore(OnSqlite, InventoryStoreContract):
    pass


class TestPostgresInventoryStore(OnPostgres, InventoryStoreContract):
    pass
