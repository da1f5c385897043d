"""The catch-up subscription contract (``tests/contract/suites/subscription.py``) on memory, SQLite and
PostgreSQL."""

from __future__ import annotations

from tests.contract.suites.subscription import SubscriptionContract
from tests.helpers import OnMemory, OnPostgres, OnSqlite


class TestMemorySubscription(OnMemory, SubscriptionContract):
    pass


class TestSqliteSubscription(OnSqlite, SubscriptionContract):
    pass


class TestPostgresSubscription(OnPostgres, SubscriptionContract):
    pass
