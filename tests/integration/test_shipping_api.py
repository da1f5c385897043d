"""The shipping service as the kit runs it (real sockets, SQLite and PostgreSQL, the memory broker),
driven over HTTP: raw requests for the wire format, and the ShippingClient."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ordermesh.client.shipping import Address, ShipmentItem, ShippingClient
from ordermesh.config import Settings
from ordermesh.contracts import shipping as contract
from ordermesh.errors import DomainError, NotFound, PermissionDenied, Unauthenticated, ValidationError
from ordermesh.kit import Runtime
from ordermesh.kit.testing import running
from ordermesh.services.shipping.spec import SPEC
from tests.helpers import Collector

BODY = {"order_id": "o-1", "items": [{"sku": "SKU-1", "quantity": 2}, {"sku": "SKU-2", "quantity": 1}]}


@dataclass
class Api:
    rt: Runtime
    http: aiohttp.ClientSession
    seen: Collector  # every message on the shipping exchange

    def token(self, who: str = "service:orders") -> str:
        if who.startswith("service:"):
            return self.rt.tokens.issue_service(who.removeprefix("service:"))
        return self.rt.tokens.issue(who)

    async def call(
        self, method: str, path: str, body: Any = None, who: str | None = "service:orders", **kw: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {"Authorization": f"Bearer {self.token(who)}"} if who else {}
        async with self.http.request(
            method, self.rt.http_url + path, json=body, headers={**headers, **kw.pop("headers", {})}, **kw
        ) as r:
            return r.status, await r.json(content_type=None), r

    def client(self) -> ShippingClient:
        return ShippingClient(self.rt.http_url, lambda: self.token(), timeout=5.0)


@pytest.fixture
async def api(sql_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    settings = Settings(shipping_database_url=sql_url, broker_url="memory://", data_dir=tmp_path)
    async with running(SPEC, settings) as rt, aiohttp.ClientSession() as http:
        seen = Collector()
        # Bound before any request: the memory broker parks messages that reach no queue.
        await (await rt.broker()).subscribe("audit", contract.EXCHANGE, ["shipment.#"], seen)
        yield Api(rt, http, seen)


async def test_schedule_answers_201_then_200_with_the_same_shipment(api: Api) -> None:
    status, first, r = await api.call("POST", "/api/shipments", BODY)
    assert status == 201, first
    assert r.headers["Location"] == "/api/shipments/o-1"
    assert first["status"] == "scheduled" and first["order_id"] == "o-1"
    assert first["tracking_id"].startswith("OM") and len(first["tracking_id"]) == 14
    status, again, r = await api.call("POST", "/api/shipments", BODY)
    assert (status, again, r.headers["Location"]) == (200, first, "/api/shipments/o-1")
    status, got, _ = await api.call("GET", "/api/shipments/o-1")
    assert (status, got) == (200, first)


async def test_twenty_concurrent_schedules_one_shipment_one_message(api: Api) -> None:
    answers = await asyncio.gather(*(api.call("POST", "/api/shipments", BODY) for _ in range(20)))
    assert sorted(status for status, _, _ in answers) == [200] * 19 + [201]
    assert len({b["shipment_id"] for _, b, _ in answers}) == 1
    # The cancel's message is committed after every schedule's: once it is out, all earlier ones are.
    assert (await api.call("POST", "/api/shipments/o-1/cancel"))[0] == 200
    got = await api.seen.wait_for(2)
    assert [d.message.routing_key for d in got] == [contract.SHIPMENT_SCHEDULED, contract.SHIPMENT_CANCELLED]


async def test_other_items_for_the_same_order_are_a_409_problem(api: Api) -> None:
    await api.call("POST", "/api/shipments", BODY)
    other = {**BODY, "items": [{"sku": "SKU-1", "quantity": 5}]}
    status, problem, r = await api.call("POST", "/api/shipments", other)
    assert status == 409 and r.content_type == "application/problem+json"
    assert problem["detail"] == "order o-1 already has a shipment with other items"
    assert problem["type"] == "https://ordermesh.dev/problems/rule-violated"


async def test_cancel_twice_is_200_twice_and_one_message(api: Api) -> None:
    _, scheduled, _ = await api.call("POST", "/api/shipments", BODY)
    status, cancelled, _ = await api.call("POST", "/api/shipments/o-1/cancel")
    assert status == 200 and cancelled["status"] == "cancelled" and cancelled["cancelled_at"]
    assert cancelled["tracking_id"] == scheduled["tracking_id"]
    status, again, _ = await api.call("POST", "/api/shipments/o-1/cancel")
    assert (status, again) == (200, cancelled)
    # A sentinel order's message comes after the cancels': by then every cancel message is out.
    await api.call("POST", "/api/shipments", {**BODY, "order_id": "sentinel"})
    got = await api.seen.wait_for(3)
    assert [(d.message.routing_key, d.message.correlation_id) for d in got] == [
        (contract.SHIPMENT_SCHEDULED, "o-1"),
        (contract.SHIPMENT_CANCELLED, "o-1"),
        (contract.SHIPMENT_SCHEDULED, "sentinel"),
    ]


async def test_cancel_before_schedule_records_a_tombstone_and_the_schedule_gets_409(api: Api) -> None:
    status, tombstone, _ = await api.call("POST", "/api/shipments/o-1/cancel")
    assert status == 200
    assert (
        tombstone["status"] == "cancelled" and tombstone["tracking_id"] is None and tombstone["items"] == []
    )
    status, problem, _ = await api.call("POST", "/api/shipments", BODY)
    assert status == 409 and "cancelled" in problem["detail"]
    assert (await api.call("GET", "/api/shipments/o-1"))[:2] == (200, tombstone)


async def test_unknown_order_is_a_404_problem(api: Api) -> None:
    status, problem, r = await api.call("GET", "/api/shipments/nope")
    assert (status, r.content_type) == (404, "application/problem+json")
    assert problem["detail"] == "order nope has no shipment"


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"items": [{"sku": "SKU-1", "quantity": 1}]}, ["order_id"]),
        ({"order_id": "o-1", "items": []}, ["items"]),
        (
            {"order_id": "o 1", "items": [{"sku": "", "quantity": 0}, {"sku": "A", "quantity": "2"}]},
            ["order_id", "items[0].sku", "items[0].quantity", "items[1].quantity"],
        ),
        ({**BODY, "extra": 1}, ["extra"]),
        (
            {
                **BODY,
                "address": {"name": "A", "line1": "B", "city": "C", "postal_code": "1", "country": "de"},
            },
            ["address.country"],
        ),
        # Past pydantic, the domain's own checks answer the same way (a NUL would break PostgreSQL).
        (
            {
                **BODY,
                "address": {
                    "name": "A\u0000",
                    "line1": "B",
                    "city": "C",
                    "postal_code": "1",
                    "country": "DE",
                },
            },
            ["address.name"],
        ),
        ([1, 2], ["body"]),
    ],
)
async def test_bad_input_is_a_422_problem_naming_every_field(api: Api, body: Any, fields: list[str]) -> None:
    status, problem, r = await api.call("POST", "/api/shipments", body)
    assert (status, r.content_type) == (422, "application/problem+json"), problem
    assert [v["field"] for v in problem["violations"]] == fields


async def test_malformed_json_and_bad_path_ids_are_422(api: Api) -> None:
    status, problem, _ = await api.call(
        "POST", "/api/shipments", data=b'{"order_id": ', headers={"Content-Type": "application/json"}
    )
    assert status == 422 and problem["violations"][0]["field"] == "body"
    status, problem, _ = await api.call("GET", "/api/shipments/" + "x" * 129)
    assert status == 422 and [v["field"] for v in problem["violations"]] == ["order_id"]


async def test_an_end_user_token_is_403_and_no_or_a_bad_token_is_401(api: Api) -> None:
    for method, path in (
        ("POST", "/api/shipments"),
        ("GET", "/api/shipments/o-1"),
        ("POST", "/api/shipments/o-1/cancel"),
    ):
        status, problem, _ = await api.call(method, path, BODY, who="alice")
        assert status == 403 and "is not a service" in problem["detail"], (method, path)
        status, problem, r = await api.call(method, path, BODY, who=None)
        assert (status, r.headers["WWW-Authenticate"]) == (401, "Bearer"), (method, path)
        status, _, _ = await api.call(method, path, BODY, who=None, headers={"Authorization": "Bearer nope"})
        assert status == 401
    # Refused callers changed nothing.
    assert (await api.call("GET", "/api/shipments/o-1"))[0] == 404


async def test_the_client_speaks_the_api(api: Api) -> None:
    home = Address("Ada", "1 Road", "Town", "1000", "DE")
    async with api.client() as client:
        first = await client.schedule("o-1", [ShipmentItem("SKU-1", 2), ("SKU-2", 1)], home)
        assert first.status == "scheduled" and first.address == home and first.scheduled_at is not None
        assert first.items == (ShipmentItem("SKU-1", 2), ShipmentItem("SKU-2", 1))
        assert await client.schedule("o-1", [("SKU-2", 1), ("SKU-1", 2)], home) == first
        assert await client.get("o-1") == first
        cancelled = await client.cancel("o-1")
        assert cancelled.status == "cancelled" and cancelled.tracking_id == first.tracking_id
        assert await client.cancel("o-1") == cancelled
        with pytest.raises(DomainError, match="cancelled"):
            await client.schedule("o-1", [("SKU-1", 2), ("SKU-2", 1)], home)
        with pytest.raises(NotFound):
            await client.get("o-2")
        with pytest.raises(ValidationError) as caught:
            await client.schedule("o-2", [("SKU-1", 0)])
        assert [v.field for v in caught.value.violations] == ["items[0].quantity"]
    async with ShippingClient(api.rt.http_url, api.token("alice")) as user:
        with pytest.raises(PermissionDenied):
            await user.get("o-1")
    async with ShippingClient(api.rt.http_url, "not-a-token") as nobody:
        with pytest.raises(Unauthenticated):
            await nobody.get("o-1")


async def test_health_endpoints_are_the_kits(api: Api) -> None:
    async with api.http.get(api.rt.http_url + "/readyz") as r:
        assert r.status == 200
    async with api.http.get(api.rt.http_url + "/metrics") as r:
        assert r.status == 200
