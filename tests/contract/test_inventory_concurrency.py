"""The inventory store under concurrent calls (``tests/contract/suites/inventory_concurrency.py``) on
SQLite and PostgreSQL."""

from __future__ import annotations

from tests.contract.suites.inventory_concurrency import InventoryConcurrencyContract
from tests.helpers import OnPostgres, OnSqlite


class TestSqliteInventoryConcurrency(OnSqlite, InventoryConcurrencyContract):
    pass


class TestPostgresInventoryConcurrency(OnPostgres, InventoryConcurrencyContract):
    pass
