"""Idempotency keys on every backend, the transport-neutral saved outcome, and keys saved in the
old HTTP-shaped form (status + body) by the previous version, which must still replay."""

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
    is_refusal,
)
from ordermesh.problems import ProblemDocument, problem_body, problem_for
from ordermesh.rpc.status import rich_status

START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ORDER = orjson.dumps({"id": "ord-1", "status": "pending"})
REFUSALS: list[errors.OrdermeshError] = [
    errors.ValidationError(
        "bad", [errors.FieldViolation("items[0].sku", "no"), errors.FieldViolation("x", "y")]
    ),
    errors.DomainError("no"),
    errors.NotFound("gone"),
    errors.ConcurrencyConflict("order-1", 0, 1),
    errors.PermissionDenied("not you"),
    errors.IdempotencyKeyReused("other"),
]


class Declined(errors.DomainError):
    """A service's own refusal: saved as the ordermesh.errors class it derives from."""


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[tuple[IdempotencyStore, FakeClock]]:
    clock = FakeClock(START)
    if database_url.startswith("memory://"):
        yield MemoryIdempotencyStore(clock, lock_seconds=30), clock
        return
    db = await connect(database_url)
    yield await SqlIdempotencyStore.open(db, clock, lock_seconds=30), clock
    await db.close()


@pytest.mark.parametrize("error", [*REFUSALS, Declined("card declined")], ids=lambda e: type(e).__name__)
def test_a_saved_refusal_is_answered_as_the_original_on_both_transports(error: errors.OrdermeshError) -> None:
    again = SavedOutcome.refused(error).error()
    assert isinstance(error, type(again)) and str(again) == str(error)
    assert getattr(again, "violations", None) == getattr(error, "violations", None)
    assert problem_for(again) == problem_for(error)  # REST: the same status and problem document
    assert rich_status(again) == rich_status(error)  # gRPC: the same code, message and details
    assert not problem_for(again).body.startswith(b'{"error"'), "the record is not what REST sends"


def test_server_side_failures_are_not_refusals() -> None:
    assert all(is_refusal(e) for e in REFUSALS)
    assert not is_refusal(errors.InfrastructureError("database down"))
    assert not is_refusal(errors.OrdermeshError("a bug"))


def test_the_record_is_transport_neutral() -> None:
    record = orjson.loads(SavedOutcome.refused(REFUSALS[0]).body)
    assert record == {
        "error": "ValidationError",
        "message": "bad",
        "violations": [{"field": "items[0].sku", "description": "no"}, {"field": "x", "description": "y"}],
        "details": {},
    }


async def test_claim_complete_replay(store: tuple[IdempotencyStore, FakeClock]) -> None:
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


async def test_reuse_in_flight_lapse_expiry_release(store: tuple[IdempotencyStore, FakeClock]) -> None:
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


async def test_keys_saved_by_the_previous_version_still_replay(sql_url: str) -> None:
    db = await connect(sql_url)
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
