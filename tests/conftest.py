"""Shared fixtures: database backends, with PostgreSQL required under CI=true."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

PG_URL = os.environ.get("ORDERMESH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
PG_HOW = (
    "PostgreSQL is not reachable at {url} ({error}). Start it with "
    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
    "or point ORDERMESH_TEST_POSTGRES_URL at a server."
)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(PG_URL, timeout=3)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards.

    Outside CI a missing server skips; under CI=true it fails, saying how to start one.
    """
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin(f"CREATE SCHEMA {schema}"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        message = PG_HOW.format(url=PG_URL, error=exc)
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}search_path={schema}"
    asyncio.run(_admin(f"DROP SCHEMA {schema} CASCADE"))


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One URL per backend: memory://, a fresh SQLite file, a fresh PostgreSQL schema."""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/test.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQL backends only (for behaviour that needs a second process or a real transaction)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/test.db"
    return str(request.getfixturevalue("pg_url"))


AMQP_URL = os.environ.get("ORDERMESH_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
AMQP_HOW = (
    "RabbitMQ is not reachable at {url} ({error}). Start it with `rabbitmq-server -detached` "
    "or point ORDERMESH_TEST_AMQP_URL at a server."
)


def require_rabbitmq() -> None:
    """Outside CI a missing RabbitMQ skips; under CI=true it fails, saying how to start one."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(AMQP_URL)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=3).close()
    except OSError as exc:
        message = AMQP_HOW.format(url=AMQP_URL, error=exc)
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(params=["memory", "sqlite", pytest.param("amqp", marks=pytest.mark.rabbitmq)])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One URL per broker adapter; SQLite a fresh file, RabbitMQ a fresh name prefix per test."""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/broker.db"
    require_rabbitmq()
    return f"{AMQP_URL}?prefix=t{uuid.uuid4().hex[:10]}."
