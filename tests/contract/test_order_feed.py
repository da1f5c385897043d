"""The order update feed's contract (``tests/contract/suites/order_feed.py``) on memory, SQLite and
PostgreSQL."""

from __future__ import annotations

from tests.contract.suites.order_feed import OrderFeedContract
from tests.helpers import OnMemory, OnPostgres, OnSqlite


class TestMemoryOrderFeed(OnMemory, OrderFeedContract):
    pass


class TestSqliteOrderFeed(OnSqlite, OrderFeedContract):
    pass


class TestPostgresOrderFeed(OnPostgres, OrderFeedContract):
    pass
