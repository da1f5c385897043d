"""One Idempotency-Key, two transports: an outcome saved by a REST call replays over gRPC and the
other way round (a refusal as REST's problem document and as gRPC's status, from one saved
record), and a key saved by the previous, HTTP-shaped version replays over both. Real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from ordermesh import errors
from ordermesh.client import OrdersGrpcClient
from ordermesh.idempotency import SavedOutcome, SqlIdempotencyStore
from ordermesh.problems import problem_body, problem_for
from ordermesh.rpc.server import build_server, stop_server
from ordermesh.services.orders.commands import fingerprint
from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.grpc_api import SERVICE_NAME, OrderGrpcService
from tests.helpers import Api, order_body, running_api


@dataclass
class Both:
    api: Api
    grpc: OrdersGrpcClient


@pytest.fixture
async def both(database_url: str) -> AsyncIterator[Both]:
    async with running_api(database_url) as api:
        servicer = OrderGrpcService(api.system)
        server = build_server(
            registrations=[servicer.register], service_names=[SERVICE_NAME], tokens=api.tokens
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with OrdersGrpcClient(f"127.0.0.1:{port}", api.tokens.issue("alice"), retries=0) as client:
            yield Both(api, client)
        servicer.shutdown()
        await stop_server(server, 0)


def _fingerprint(body: dict[str, Any]) -> str:
    lines = [OrderLine(str(i["sku"]), int(i["quantity"]), int(i["unit_price"])) for i in _items(body)]
    return fingerprint(str(body["user_email"]), str(body["currency"]), lines)


def _items(body: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = body["items"]
    return items


async def test_an_order_made_over_rest_replays_over_grpc_and_back(both: Both) -> None:
    body = order_body()
    status, made = await both.api.call("POST", "/api/orders", json=body, headers={"Idempotency-Key": "k-1"})
    assert status == 201
    again = await both.grpc.create_order(body["user_email"], "EUR", _items(body), idempotency_key="k-1")
    assert again == made

    made_grpc = await both.grpc.create_order(body["user_email"], "EUR", _items(body), idempotency_key="k-2")
    async with both.api.http.post(
        both.api.url + "/api/orders", json=body, headers={**both.api.auth("alice"), "Idempotency-Key": "k-2"}
    ) as r:
        assert r.status == 201 and r.headers["Idempotent-Replayed"] == "true"
        assert await r.json() == made_grpc and r.headers["Location"] == f"/api/orders/{made_grpc['id']}"
    _, listing = await both.api.call("GET", "/api/users/alice/orders")
    assert len(listing["orders"]) == 2, "replays must not create orders"


async def test_a_refusal_is_saved_and_replayed_over_grpc(both: Both) -> None:
    # gRPC has no schema in front of the domain: the domain's refusal is the saved outcome.
    items = [{"sku": "not a sku!", "quantity": 1, "unit_price": 100}]
    with pytest.raises(errors.ValidationError) as first:
        await both.grpc.create_order("alice@example.com", "EUR", items, idempotency_key="bad-1")
    assert [v.field for v in first.value.violations] == ["items[0].sku"]
    fp = fingerprint("alice@example.com", "EUR", [OrderLine("not a sku!", 1, 100)])
    saved = await both.api.system.idempotency.begin("alice", "bad-1", fp)
    assert saved is not None and saved.kind == "error", "the refusal was saved"
    with pytest.raises(errors.ValidationError) as replayed:
        await both.grpc.create_order("alice@example.com", "EUR", items, idempotency_key="bad-1")
    assert str(replayed.value) == str(first.value) and replayed.value.violations == first.value.violations


@pytest.mark.parametrize(
    "refusal",
    [
        errors.ValidationError("invalid order: user_id", [errors.FieldViolation("user_id", "too long")]),
        errors.DomainError("no more orders today"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_a_saved_refusal_replays_over_rest_as_its_problem_document(
    both: Both, refusal: errors.OrdermeshError
) -> None:
    # What REST itself cannot provoke today (its schema refuses first), saved by another transport.
    body = order_body()
    await both.api.system.idempotency.begin("alice", "refused", _fingerprint(body))
    await both.api.system.idempotency.complete("alice", "refused", SavedOutcome.refused(refusal))
    headers = {**both.api.auth("alice"), "Idempotency-Key": "refused"}
    async with both.api.http.post(both.api.url + "/api/orders", json=body, headers=headers) as r:
        expected = problem_for(refusal)
        assert (r.status, await r.read()) == (expected.status, expected.body)
        assert r.headers["Content-Type"] == "application/problem+json"
        assert r.headers["Idempotent-Replayed"] == "true" and "Location" not in r.headers
    with pytest.raises(type(refusal)) as caught:
        await both.grpc.create_order(body["user_email"], "EUR", _items(body), idempotency_key="refused")
    assert str(caught.value) == str(refusal)


# SQL backends only: the memory store has no rows from an earlier version.
@pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_keys_saved_in_the_old_http_shape_replay_on_both_transports(both: Both) -> None:
    store = both.api.system.idempotency
    assert isinstance(store, SqlIdempotencyStore)
    body = order_body()
    print_ = _fingerprint(body)
    refused = problem_body(
        422, "invalid-input", "items: too many", [{"field": "items", "description": "too many"}]
    )
    _, real = await both.api.call("POST", "/api/orders", json=body)
    made = (201, orjson.dumps(real))
    for key, (status, saved) in {"old-refused": (422, refused), "old-made": made}.items():
        await store.begin("alice", key, print_)  # claimed, then completed as the old version did
        await store.db.execute(
            "UPDATE idempotency_keys SET status = $3, body = $4, kind = NULL WHERE scope = $1 AND key = $2",
            "alice",
            key,
            status,
            saved,
        )

    async with both.api.http.post(
        both.api.url + "/api/orders",
        json=body,
        headers={**both.api.auth("alice"), "Idempotency-Key": "old-refused"},
    ) as r:
        assert (r.status, await r.read()) == (422, refused) and r.headers["Idempotent-Replayed"] == "true"
    with pytest.raises(errors.ValidationError) as caught:
        await both.grpc.create_order(body["user_email"], "EUR", _items(body), idempotency_key="old-refused")
    assert caught.value.violations == (errors.FieldViolation("items", "too many"),)

    status, replayed = await both.api.call(
        "POST", "/api/orders", json=body, headers={"Idempotency-Key": "old-made"}
    )
    assert (status, replayed) == (201, real)
    assert (
        await both.grpc.create_order(body["user_email"], "EUR", _items(body), idempotency_key="old-made")
        == real
    )
