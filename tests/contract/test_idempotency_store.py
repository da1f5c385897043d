"""The idempotency store contract (``tests/contract/suites/idempotency_store.py``) on memory,
SQLite and PostgreSQL (the SQL ones with the keys the previous version saved), and the saved
outcome itself: transport-neutral, answered as the original on REST and gRPC."""

from __future__ import annotations

import orjson
import pytest

from ordermesh import errors
from ordermesh.idempotency import SavedOutcome, is_refusal
from ordermesh.problems import problem_for
from ordermesh.rpc.status import rich_status
from tests.contract.suites.idempotency_store import IdempotencyStoreContract, SqlIdempotencyStoreContract
from tests.helpers import OnMemory, OnPostgres, OnSqlite

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


class TestMemoryIdempotencyStore(OnMemory, IdempotencyStoreContract):
    pass


class TestSqliteIdempotencyStore(OnSqlite, SqlIdempotencyStoreContract):
    pass


class TestPostgresIdempotencyStore(OnPostgres, SqlIdempotencyStoreContract):
    pass


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
