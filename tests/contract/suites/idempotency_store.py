"""Idempotency keys on every backend, the transport-neutral saved outcome, and keys saved in the
old HTTP-shaped form (status + body) by the previous version, which must still replay.

To check an adapter, subclass ``IdempotencyStoreContract`` and give the subclass a ``database_url``
fixture: a fresh database for each test (``memory://`` is the ``MemoryIdempotencyStore``, any other
URL is connected with ``ordermesh.db.connect`` for a ``SqlIdempotencyStore``; a SQL one subclasses
``SqlIdempotencyStoreContract``, which adds the keys the previous version saved). ``OnMemory``,
``OnSqlite`` and ``OnPostgres`` (``tests.helpers``) give the built-in ones. An adapter no URL names
overrides the ``store`` fixture instead, to hand each test an ``IdempotencyStore`` and its
``FakeClock``.

    class TestSqliteIdempotencyStore(OnSqlite, SqlIdempotencyStoreContract):
        pass
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import orjson
import pytest

from ordermesh import errors
from ordermesh.clock import FakeClock
from ordermesh.db import connect
from ordermesh.db.port import ts_param
from ordermesh.idempotency import (
    IdempotencyStore,
    MemoryIdempotencyStore,
    SavedOutcome,
    SqlIdempotencyStore,
)
from ordermesh.problems import ProblemDocument, problem_body, problem_for
from ordermesh.rpc.status import rich_status

START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ORDER = orjson.dumps({"id": "ord-1", "status": "pending"})
# What the previous version created and stored: the table without ``kind``, HTTP outcomes.
_OLD_DDL = """CREATE TABLE idempotency_keys (
    scope text NOT NULL, key text NOT NULL, fingerprint text NOT NULL,
    status integer, body {blob}, claimed_at {ts} NOT NULL, created_at {ts} NOT NULL,
    PRIMARY KEY (scope, key))"""
_INVALID = problem_body(422, "invalid-input", "items: bad", [{"field": "items", "description": "bad"}])
_LEGACY: dict[str, tuple[int | None, bytes | None]] = {
    "created": (201, ORDER),
    "invalid": (422, _INVALID),
    "refused": (409, problem_body(409, "rule-violated", "no such thing")),
    "hidden": (404, problem_body(404, "not-found", "no product P")),
    "in-flight": (None, None),
}


class IdempotencyStoreContract:
    """Every test an idempotency store must pass; a subclass gives ``database_url``."""

    @pytest.fixture
    async def store(self, database_url: str) -> AsyncIterator[tuple[IdempotencyStore, FakeClock]]:
        clock = FakeClock(START)
        if database_url.startswith("memory://"):
            yield MemoryIdempotencyStore(clock, lock_seconds=30), clock
            return
        db = await connect(database_url)
        yield await SqlIdempotencyStore.open(db, clock, lock_seconds=30), clock
        await db.close()

    async def test_claim_complete_replay(self, store: tuple[IdempotencyStore, FakeClock]) -> None:
        keys, _ = store
        assert await keys.begin("alice", "k", "fp") is None
        await keys.complete("alice", "k", SavedOutcome.ok(ORDER))
        assert await keys.begin("alice", "k", "fp") == SavedOutcome("ok", ORDER)
        assert await keys.begin("bob", "k", "fp") is None, "keys are scoped per user"

        refusal = SavedOutcome.refused(errors.ValidationError("bad", [errors.FieldViolation("f", "why")]))
        assert await keys.begin("alice", "k2", "fp") is None
        await keys.complete("alice", "k2", refusal)
        replayed = await keys.begin("alice", "k2", "fp")
        assert replayed == refusal and replayed.kind == "error"
        again = replayed.error()
        assert isinstance(again, errors.ValidationError) and again.violations == (
            errors.FieldViolation("f", "why"),
        )

    async def test_reuse_in_flight_lapse_expiry_release(
        self, store: tuple[IdempotencyStore, FakeClock]
    ) -> None:
        keys, clock = store
        assert await keys.begin("alice", "k", "fp") is None
        with pytest.raises(errors.IdempotencyKeyInUse):
            await keys.begin("alice", "k", "fp")
        clock.advance(31)  # the first request crashed: its claim lapses and a retry takes over
        with pytest.raises(errors.IdempotencyKeyReused):
            await keys.begin("alice", "k", "another request")
        assert await keys.begin("alice", "k", "fp") is None
        await keys.complete("alice", "k", SavedOutcome.ok(ORDER))
        clock.advance(24 * 3600 + 1)  # kept 24 hours
        assert await keys.begin("alice", "k", "another request") is None
        await keys.release("alice", "k")
        assert await keys.begin("alice", "k", "fp") is None


class SqlIdempotencyStoreContract(IdempotencyStoreContract):
    """Every test a SQL idempotency store must pass, and the keys the previous version saved."""

    async def test_keys_saved_by_the_previous_version_still_replay(self, database_url: str) -> None:
        db = await connect(database_url)
        try:
            old = {"postgres": ("bytea", "timestamptz"), "sqlite": ("BLOB", "INTEGER")}[db.dialect]
            await db.execute(_OLD_DDL.format(blob=old[0], ts=old[1]))
            clock = FakeClock(START)
            for key, (status, body) in _LEGACY.items():
                await db.execute(
                    "INSERT INTO idempotency_keys (scope, key, fingerprint, status, body, claimed_at, "
                    "created_at) VALUES ('alice', $1, 'fp', $2, $3, $4, $4)",
                    key,
                    status,
                    body,
                    ts_param(db.dialect, START),
                )
            keys = await SqlIdempotencyStore.open(db, clock, lock_seconds=30)
            await SqlIdempotencyStore.open(db, clock, lock_seconds=30)  # a second start: nothing to add

            assert await keys.begin("alice", "created", "fp") == SavedOutcome.ok(ORDER)
            grpc_codes = {
                "invalid": grpc.StatusCode.INVALID_ARGUMENT,
                "refused": grpc.StatusCode.FAILED_PRECONDITION,
                "hidden": grpc.StatusCode.NOT_FOUND,
            }
            for key, code in grpc_codes.items():
                status, body = _LEGACY[key]
                saved = await keys.begin("alice", key, "fp")
                assert saved is not None and saved.kind == "error"
                # REST answers byte for byte what the previous version saved and answered; gRPC with
                # the status the previous version decoded from that document.
                assert problem_for(saved.error()) == ProblemDocument(status or 0, body or b""), key
                assert rich_status(saved.error()).code == code.value[0], key
            with pytest.raises(errors.IdempotencyKeyReused):
                await keys.begin("alice", "invalid", "another request")
            with pytest.raises(errors.IdempotencyKeyInUse):
                await keys.begin("alice", "in-flight", "fp")
            clock.advance(31)
            assert await keys.begin("alice", "in-flight", "fp") is None
            await keys.complete("alice", "in-flight", SavedOutcome.ok(ORDER))
            assert await keys.begin("alice", "in-flight", "fp") == SavedOutcome.ok(ORDER)
        finally:
            await db.close()
