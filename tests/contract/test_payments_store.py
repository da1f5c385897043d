"""The payment service's store contract (``tests/contract/suites/payments_store.py``) on SQLite and
PostgreSQL."""

from __future__ import annotations

from tests.contract.suites.payments_store import PaymentStoreContract
from tests.helpers import OnPostgres, OnSqlite


class TestSqlitePaymentStore(OnSqlite, PaymentStoreContract):
    pass


class TestPostgresPaymentStore(OnPostgres, PaymentStoreContract):
    pass
