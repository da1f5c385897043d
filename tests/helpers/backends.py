"""The servers the suite needs, and the adapters a contract suite runs on.

PostgreSQL and RabbitMQ: outside CI a missing server skips the tests that need it; under
``CI=true`` it fails them, saying how to start one (``ORDERMESH_TEST_POSTGRES_URL`` and
``ORDERMESH_TEST_AMQP_URL`` point elsewhere).

``OnMemory``, ``OnSqlite`` and ``OnPostgres`` give a contract class's subclass its
``database_url`` fixture: ``class TestSqliteEventStore(OnSqlite, EventStoreContract)`` runs every
test of the contract on a fresh SQLite file (see ``tests/contract/suites``).
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

PG_URL = os.environ.get("ORDERMESH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
PG_HOW = (
    "PostgreSQL is not reachable at {url} ({error}). Start it with "
    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
    "or point ORDERMESH_TEST_POSTGRES_URL at a server."
)
AMQP_URL = os.environ.get("ORDERMESH_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
AMQP_HOW = (
    "RabbitMQ is not reachable at {url} ({error}). Start it with `rabbitmq-server -detached` "
    "or point ORDERMESH_TEST_AMQP_URL at a server."
)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing(message: str) -> None:
    """A server or a feature the test needs is not there: skip, or fail under CI=true."""
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_rabbitmq() -> None:
    """Outside CI a missing RabbitMQ skips; under CI=true it fails, saying how to start one."""
    parts = urlsplit(AMQP_URL)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=3).close()
    except OSError as exc:
        missing(AMQP_HOW.format(url=AMQP_URL, error=exc))


def require_fast_path() -> None:
    """The RabbitMQ fast path runs only on the aiormq/pamqp versions it was verified on."""
    from ordermesh.messaging.rabbitmq import fastpath  # aiormq and aio-pika: only when asked

    if off := fastpath.unverified(fastpath.installed_versions()):
        missing(f"the RabbitMQ fast path is not verified on {', '.join(off)}: see fastpath.VERIFIED")


def amqp_prefix() -> str:
    """A fresh name prefix: a test's exchanges and queues, apart from every other run's."""
    return f"t{uuid.uuid4().hex[:10]}."


def amqp_url(fast_path: bool | None = None) -> str:
    """RabbitMQ under a fresh prefix (required, as ``require_rabbitmq`` says); on the fast path,
    on aiormq's stock path, or (None) as the installed versions decide."""
    require_rabbitmq()
    url = f"{AMQP_URL}?prefix={amqp_prefix()}"
    if fast_path is None:
        return url
    if fast_path:
        require_fast_path()
    return f"{url}&fast_path={int(fast_path)}"


class OnMemory:
    """A contract's subclass on the in-memory adapters."""

    @pytest.fixture
    def database_url(self) -> str:
        return "memory://"


class OnSqlite:
    """A contract's subclass on a fresh SQLite file per test."""

    @pytest.fixture
    def database_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/test.db"


@pytest.mark.postgres
class OnPostgres:
    """A contract's subclass on a fresh PostgreSQL schema per test (conftest's ``pg_url``)."""

    @pytest.fixture
    def database_url(self, pg_url: str) -> str:
        return pg_url


__all__ = [
    "AMQP_HOW",
    "AMQP_URL",
    "PG_HOW",
    "PG_URL",
    "OnMemory",
    "OnPostgres",
    "OnSqlite",
    "amqp_prefix",
    "amqp_url",
    "in_ci",
    "missing",
    "require_fast_path",
    "require_rabbitmq",
]
