"""Resilience with real processes (``ordermesh run NAME`` each, embedded defaults), faults injected
through the services' admin routes as ``ordermesh faults`` does:

- payments erroring: the order service's breaker opens within its failure threshold, the saga
  parks instead of hammering payments (its ``ProcessPayment`` count stops growing), and once
  payments recovers one probe closes the breaker and every parked order ships, charged once;
- payments slow: each call is cut at the step's deadline, the saga retries, and past its own
  deadline compensates — nothing charged, the order cancelled with the reason.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from ordermesh.auth import Tokens
from ordermesh.client.inventory import InventoryClient
from ordermesh.client.payments import PaymentsClient
from ordermesh.config import Settings
from ordermesh.errors import NotFound
from ordermesh.saga import SagaPolicy
from tests.helpers import Fleet, eventually_sync

TOKENS = Tokens(Settings())
ADMIN = {"Authorization": f"Bearer {TOKENS.issue_service('test')}"}
USER = {"Authorization": f"Bearer {TOKENS.issue('rae')}"}
FAILURES = 3  # the payments breaker's threshold here
OPEN_FOR = 1.5


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "data")
    f.env["ORDERMESH_WRITE_RATE"] = "0"
    try:
        yield f
    finally:
        f.stop_all()


def set_faults(fleet: Fleet, service: str, link: dict[str, Any] | None) -> None:
    url = f"{fleet.url(service)}/admin/faults"
    if link is None:
        answer = requests.delete(url, headers=ADMIN, timeout=5)
    else:
        answer = requests.put(url, data=orjson.dumps({"link": link, "queues": {}}), headers=ADMIN, timeout=5)
    assert answer.status_code == 200, answer.text


def breaker(fleet: Fleet, downstream: str) -> dict[str, Any]:
    answer = requests.get(f"{fleet.url('orders')}/admin/breakers", headers=ADMIN, timeout=5)
    assert answer.status_code == 200, answer.text
    rows = {row["downstream"]: row for row in answer.json()["downstreams"]}
    return dict(rows[downstream])


def served(fleet: Fleet, service: str, method: str) -> int:
    """How many ``method`` calls ``service`` answered, by its own /metrics."""
    text = requests.get(f"{fleet.url(service)}/metrics", timeout=5).text
    pattern = rf'ordermesh_grpc_calls_total\{{[^}}]*method="[^"]*/{method}"[^}}]*\}} ([0-9.e+]+)'
    return int(sum(float(v) for v in re.findall(pattern, text)))


def place(fleet: Fleet, n: int) -> str:
    body = {
        "user_email": "rae@example.com",
        "currency": "EUR",
        "items": [{"sku": f"SKU-{n % 9 + 1}", "quantity": 1, "unit_price": 500}],
    }
    answer = requests.post(f"{fleet.url('orders')}/api/orders", json=body, headers=USER, timeout=10)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def saga(fleet: Fleet, order_id: str) -> dict[str, Any] | None:
    answer = requests.get(f"{fleet.url('orders')}/api/orders/{order_id}/saga", headers=USER, timeout=5)
    return answer.json() if answer.status_code == 200 else None


def order(fleet: Fleet, order_id: str) -> dict[str, Any]:
    answer = requests.get(f"{fleet.url('orders')}/api/orders/{order_id}", headers=USER, timeout=5)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def ledger(fleet: Fleet, order_ids: list[str]) -> dict[str, tuple[int, int]]:
    """(charged, refunded) per order, from payments itself ((0, 0): never charged)."""
    token = TOKENS.issue_service("test")
    out: dict[str, tuple[int, int]] = {}
    async with PaymentsClient(f"127.0.0.1:{fleet.env['ORDERMESH_PAYMENTS_GRPC_PORT']}", token) as pay:
        for order_id in order_ids:
            try:
                payment = await pay.get_payment(order_id)
            except NotFound:
                out[order_id] = (0, 0)
            else:
                out[order_id] = (payment.charged, payment.refunded)
    return out


async def reserved(fleet: Fleet) -> int:
    token = TOKENS.issue_service("test")
    async with InventoryClient(f"127.0.0.1:{fleet.env['ORDERMESH_INVENTORY_GRPC_PORT']}", token) as stock:
        return sum(level.reserved for level in await stock.stock())


def test_payments_erroring_opens_the_breaker_parks_the_sagas_and_one_probe_closes_it(fleet: Fleet) -> None:
    for service in ("payments", "inventory", "shipping"):
        fleet.start(service)
    policy = {
        "payments": {"breaker_failures": FAILURES, "breaker_open_seconds": OPEN_FOR, "retry_attempts": 1}
    }
    fleet.start("orders", ORDERMESH_POLICIES=orjson.dumps(policy).decode())
    set_faults(fleet, "payments", {"error_rate": 1.0})

    first = place(fleet, 0)
    eventually_sync(
        lambda: breaker(fleet, "payments")["state"] == "open", what="the payments breaker to open"
    )
    opened = breaker(fleet, "payments")
    assert opened["failures"] == FAILURES and opened["opened"] == 1  # within N failures, and no more
    reached = served(fleet, "payments", "ProcessPayment")
    assert reached == FAILURES

    # Open: more orders come, their sagas park; nothing reaches payments, nothing piles up.
    later = [place(fleet, n) for n in range(1, 5)]
    parked = eventually_sync(
        lambda: all((s := saga(fleet, o)) and s["steps"][0]["outcome"] == "parked" for o in [first, *later]),
        what="every saga to park",
    )
    assert parked
    assert breaker(fleet, "payments")["in_flight"] == 0
    assert served(fleet, "payments", "ProcessPayment") == reached  # failed fast, unsent
    detail = saga(fleet, first)["steps"][0]["detail"]  # type: ignore[index]
    assert "circuit open" in detail

    # Payments recovers: after the open interval one probe goes through and closes the breaker.
    set_faults(fleet, "payments", None)
    eventually_sync(
        lambda: breaker(fleet, "payments")["state"] == "closed", timeout=OPEN_FOR + 10, what="closed"
    )
    orders = [first, *later]
    ended = eventually_sync(
        lambda: all(order(fleet, o)["status"] == "shipped" for o in orders),
        timeout=30,
        what="every order shipped",
    )
    assert ended and breaker(fleet, "payments")["opened"] == 1
    charges = asyncio.run(ledger(fleet, orders))
    assert set(charges.values()) == {(500, 0)}  # each charged exactly once, nothing refunded
    assert asyncio.run(reserved(fleet)) == 0  # every reservation committed


def test_payments_slow_is_cut_at_each_steps_deadline_and_the_saga_compensates_at_its_own(
    fleet: Fleet,
) -> None:
    for service in ("payments", "inventory", "shipping"):
        fleet.start(service)
    fleet.start(
        "orders",
        ORDERMESH_SAGA_STEP_TIMEOUT="0.4",
        ORDERMESH_SAGA_DEADLINE="3",
        # A slow downstream is a failing one: allow many before the breaker opens, so this test
        # sees the deadlines at work rather than the breaker.
        ORDERMESH_POLICIES=orjson.dumps(
            {"payments": {"breaker_failures": 100, "breaker_failure_rate": 1}}
        ).decode(),
    )
    set_faults(fleet, "payments", {"delay_ms": 2000})
    began = time.monotonic()
    order_id = place(fleet, 0)

    def cancelled() -> dict[str, Any] | None:
        o = order(fleet, order_id)
        return o if o["status"] == "cancelled" else None

    # The refund (a compensation) meets the same slow payments and is retried until it succeeds:
    # let it, once the saga has decided.
    eventually_sync(
        lambda: (s := saga(fleet, order_id)) and s["state"] != "running", timeout=20, what="compensating"
    )
    decided = time.monotonic() - began
    assert decided < 10  # at the saga's deadline (3 s), not at the 2 s the calls would take
    set_faults(fleet, "payments", None)
    final = eventually_sync(cancelled, timeout=30, what="the order cancelled")
    assert "deadline" in final["cancel_reason"]
    view = saga(fleet, order_id)
    assert view is not None and view["state"] == "compensated"
    payment = view["steps"][0]
    assert payment["name"] == "payment" and payment["attempts"] >= 3 and payment["detail"]
    # Not before its deadline could no longer be met: it gives up early only when the back-off
    # before its next try (SagaPolicy: 0.2 s, doubling per attempt) would end past the deadline,
    # which a loaded machine reaches after fewer attempts and sooner.
    assert decided >= 3 - SagaPolicy().backoff(payment["attempts"]).total_seconds()
    # Each attempt was cut at the step's deadline: payments never finished one, nothing is charged.
    assert asyncio.run(ledger(fleet, [order_id]))[order_id] in {(0, 0), (500, 500)}
