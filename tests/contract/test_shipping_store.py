"""The shipping service's store contract (``tests/contract/suites/shipping_store.py``) on SQLite and
PostgreSQL."""

from __future__ import annotations

from tests.contract.suites.shipping_store import ShippingStoreContract
from tests.helpers import OnPostgres, OnSqlite


class TestSqliteShippingStore(OnSqlite, ShippingStoreContract):
    pass


class TestPostgresShippingStore(OnPostgres, ShippingStoreContract):
    pass
