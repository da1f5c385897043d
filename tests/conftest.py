"""Shared fixtures: database backends, with PostgreSQL required under CI=true. The servers'
addresses and the skip-or-fail rule live in the kit (``tests.helpers.backends``)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import stamina

from tests.helpers.backends import AMQP_URL, PG_HOW, PG_URL, in_ci, missing, require_rabbitmq

# Test modules that still import these from here (tests.conftest) keep working; new ones import
# them from tests.helpers.
__all__ = ["AMQP_URL", "PG_URL", "in_ci", "require_rabbitmq"]


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(PG_URL, timeout=3)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def no_retry_waits() -> Iterator[None]:
    """stamina's test mode: retries happen at once (ours too: ``resilience.retry`` skips its own
    first wait in it). Use with ``pytestmark = pytest.mark.usefixtures("no_retry_waits")``."""
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards.

    Outside CI a missing server skips; under CI=true it fails, saying how to start one.
    """
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin(f"CREATE SCHEMA {schema}"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        missing(PG_HOW.format(url=PG_URL, error=exc))
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


@pytest.fixture(params=["memory", "sqlite", pytest.param("amqp", marks=pytest.mark.rabbitmq)])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One URL per broker adapter; SQLite a fresh file, RabbitMQ a fresh name prefix per test."""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/broker.db"
    require_rabbitmq()
    return f"{AMQP_URL}?prefix=t{uuid.uuid4().hex[:10]}."
