"""`ordermesh demo` against `ordermesh up` (five processes), as a user runs it, and the system's
own APIs afterwards: every order the demo placed has ended, money and stock add up."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import requests
from rich.console import Console

from ordermesh.auth import Tokens
from ordermesh.client.inventory import InventoryClient
from ordermesh.client.payments import PaymentsClient
from ordermesh.config import Settings
from ordermesh.demo import Row, summarize
from ordermesh.errors import NotFound
from tests.helpers import BIN, eventually_sync, free_port

STOCK = 1000  # each of SKU-1 … SKU-9 in the demo catalog


def demo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), "demo", *args], env=env, capture_output=True, text=True, timeout=120)


def test_the_demo_places_a_mix_and_every_order_ends_as_planned(system: tuple[str, dict[str, str]]) -> None:
    url, env = system
    done = demo(env, "--orders", "12")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # Of every six orders: four ship, one is declined, one is short of stock.
    for outcome, count in (
        ("shipped", 8),
        ("cancelled-declined", 2),
        ("cancelled-out-of-stock", 2),
        ("other", 0),
    ):
        assert re.search(rf"^{outcome}: {count}  p50 ", out, re.MULTILINE), out
    assert re.search(r"^shipped: 8  p50 \d+ ms  p99 \d+ ms$", out, re.MULTILINE), out
    assert "ok: all 12 orders ended shipped or cancelled with a reason" in out
    assert "payment declined" in out and "stock unavailable" in out  # the live table's reasons

    # The same story from the system's own APIs, for the users the demo ordered as.
    tokens = Tokens(Settings.from_env(env))
    users = sorted(set(re.findall(r"demo-[0-9a-f]{6}-\d+", out)))
    assert users
    orders: list[dict[str, Any]] = []
    for user in users:
        response = requests.get(
            f"{url}/api/users/{user}/orders",
            headers={"Authorization": f"Bearer {tokens.issue(user)}"},
            timeout=5,
        )
        assert response.status_code == 200, response.text
        orders += response.json()["orders"]
    assert len(orders) == 12
    assert sorted(o["status"] for o in orders) == ["cancelled"] * 4 + ["shipped"] * 8
    asyncio.run(_check_money_and_stock(env, tokens, orders))


async def _check_money_and_stock(env: dict[str, str], tokens: Tokens, orders: list[dict[str, Any]]) -> None:
    token = tokens.issue_service("test")
    async with PaymentsClient(f"127.0.0.1:{env['ORDERMESH_PAYMENTS_GRPC_PORT']}", token) as pay:
        for order in orders:
            try:
                payment = await pay.get_payment(order["id"])
                net = payment.charged - payment.refunded
            except NotFound:
                net = 0
            if order["status"] == "shipped":
                assert net == order["total"] and order["tracking_id"], order
            else:
                assert net == 0 and order["cancel_reason"], order
    async with InventoryClient(f"127.0.0.1:{env['ORDERMESH_INVENTORY_GRPC_PORT']}", token) as stock:
        levels = await stock.stock()
    shipped_units = sum(i["quantity"] for o in orders if o["status"] == "shipped" for i in o["items"])
    assert sum(level.shipped for level in levels) == shipped_units
    for level in levels:
        assert level.available + level.reserved + level.shipped == STOCK, level
        assert level.reserved == 0, level  # nothing held once every saga has ended


def test_the_demo_without_a_running_system_says_to_start_it(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "ORDERMESH_DATA_DIR": str(tmp_path), "COLUMNS": "200"}
    done = demo(env, "--orders", "3", "--url", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and "not running" in lines[0] and "`make up`" in lines[0], done.stdout
    assert done.stderr == ""


def test_an_order_that_did_not_end_fails_the_summary_and_is_named() -> None:
    console = Console(width=200, record=True, force_terminal=False)
    rows = [
        Row("ship", "u", [], order_id="o-1", status="shipped", latency=0.2),
        Row(
            "decline", "u", [], order_id="o-2", status="cancelled", reason="payment declined: x", latency=0.1
        ),
        Row("ship", "u", [], order_id="o-3", status="paid", step="stock (retrying)"),
        Row("short", "u", [], order_id="o-4", status="cancelled"),  # no reason: not a good end either
    ]
    assert summarize(rows, console) == 1
    text = console.export_text()
    assert "shipped: 1" in text and "cancelled-declined: 1" in text and "other: 2" in text
    assert "2 of 4 orders did not end" in text
    assert "o-3  paid at stock (retrying)" in text and "o-4  cancelled" in text
    assert summarize(rows[:2], console) == 0


def test_with_payments_failing_the_demo_shows_the_breaker_open_and_the_parked_orders_complete_after(
    system: tuple[str, dict[str, str]],
) -> None:
    """The issue's walk-through: faults set on payments, the demo sees its breaker open, orders
    parked and reads unharmed; faults cleared, every parked order ends, money and stock add up."""
    url, env = system
    cli = lambda *args: subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True, timeout=30)  # noqa: E731
    assert cli("faults", "set", "payments", "--error-rate", "1").returncode == 0
    done = demo(env, "--orders", "6")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "payments OPEN" in out and re.search(r"^parked: 6  p50 ", out, re.MULTILINE), out
    assert re.search(r"order reads while it ran: [1-9]\d* answered, 0 failed", out), out
    # Another ORDERMESH_HTTP_PORT, as when `up --port` moved the order service: the CLI still
    # finds it, at the address the running up recorded in DATA_DIR/up.json.
    moved = {**env, "ORDERMESH_HTTP_PORT": str(free_port())}
    shown = subprocess.run(
        [str(BIN), "breakers", "--json"], env=moved, capture_output=True, text=True, timeout=30
    )
    assert shown.returncode == 0, shown.stderr
    payments = next(row for row in json.loads(shown.stdout) if row.get("downstream") == "payments")
    assert payments["state"] in ("open", "half_open") and payments["opened"] >= 1

    cleared = cli("faults", "clear")
    assert cleared.returncode == 0 and "payments: faults cleared" in cleared.stdout
    tokens = Tokens(Settings.from_env(env))
    users = sorted(set(re.findall(r"demo-[0-9a-f]{6}-\d+", out)))

    def all_ended() -> list[dict[str, Any]]:
        orders: list[dict[str, Any]] = []
        for user in users:
            headers = {"Authorization": f"Bearer {tokens.issue(user)}"}
            answer = requests.get(f"{url}/api/users/{user}/orders", headers=headers, timeout=5)
            orders += answer.json()["orders"]
        assert len(orders) == 6 and all(o["status"] in ("shipped", "cancelled") for o in orders), orders
        return orders

    orders = eventually_sync(all_ended, interval=0.2)  # other processes' sagas: polled
    assert sum(o["status"] == "shipped" for o in orders) == 4  # the declined and the short one cancel
    asyncio.run(_check_money_and_stock(env, tokens, orders))
