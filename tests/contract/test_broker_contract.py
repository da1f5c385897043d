"""The broker contract (``tests/contract/suites/broker.py``) on every adapter: memory, the
embedded broker (a SQLite file), and RabbitMQ twice: on the fast path and on aiormq's stock path
(``?fast_path=0``), the one every aiormq 7 / pamqp 4 the fast path was not verified on gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.contract.suites.broker import BrokerContract
from tests.helpers import amqp_url


class TestMemoryBroker(BrokerContract):
    @pytest.fixture
    def broker_url(self) -> str:
        return "memory://"


class TestEmbeddedBroker(BrokerContract):
    @pytest.fixture
    def broker_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/broker.db"


@pytest.mark.rabbitmq
class TestRabbitMQFastPath(BrokerContract):
    @pytest.fixture
    def broker_url(self) -> str:
        return amqp_url(fast_path=True)


@pytest.mark.rabbitmq
class TestRabbitMQStockPath(BrokerContract):
    @pytest.fixture
    def broker_url(self) -> str:
        return amqp_url(fast_path=False)
