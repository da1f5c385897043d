"""The operator CLI for scripts: --json on every command that prints data, JSON (not Python
reprs) in tables, and nothing to replay is not an error."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ordermesh import catalog
from ordermesh.cli import app
from ordermesh.config import load
from ordermesh.messaging import open_broker
from ordermesh.messaging.port import Delivery, Message, PermanentError
from tests.helpers import FAST, dead_letters, order_payload

runner = CliRunner()


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("ORDERMESH_DATABASE_URL", "ORDERMESH_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ORDERMESH_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def run(*args: str) -> Any:
    done = runner.invoke(app, list(args))
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout) if "--json" in args else done.stdout


def test_order_commands_speak_json() -> None:
    created = run(
        "order", "create", "--user", "ann", "--email", "ann@example.com", "--item", "SKU-1:2:1250", "--json"
    )
    assert created["status"] == "pending" and created["total"] == 2500
    assert run("order", "show", created["id"], "--json") == created
    assert [o["id"] for o in run("order", "list", "--user", "ann", "--json")] == [created["id"]]
    [event] = run("events", created["id"], "--json")
    assert event["type"] == "OrderCreated" and event["data"]["user_id"] == "ann"
    table = run("events", created["id"])
    assert '"user_id":"ann"' in table and "'user_id'" not in table  # JSON, not a Python repr
    assert {p["name"] for p in run("projections", "list", "--json")} >= {"order_detail", "user_orders"}
    status = run("outbox", "status", "--json")
    assert status["head"] == 1 and status["parked"] == []


def test_info_and_dead_letters_speak_json(data_dir: Path) -> None:
    info = run("info", "--json")
    assert info["data_dir"] == str(data_dir.resolve())
    assert [s["service"] for s in info["services"]] == [
        "orders",
        "payments",
        "inventory",
        "shipping",
        "notifications",
    ]
    assert run("dlq", "list", "--json") == []
    assert "nothing to replay" in run("dlq", "replay", "--all")  # an empty DLQ is no error
    missing = runner.invoke(app, ["dlq", "replay", "no-such-id"])
    assert missing.exit_code == 1 and "no dead letter no-such-id" in missing.output


def test_dead_letters_of_every_services_queues_are_listed_without_naming_one() -> None:
    """A dead letter in a choreography queue (``payments.order_created``), not only in the
    notification service's: ``dlq list`` looks in every queue the catalog's services consume."""
    queues = catalog.consumer_queues()
    assert {"payments.order_created", "inventory.payment_processed", "shipping.stock_reserved"} <= set(queues)
    assert {"orders.payment_events", "notifications.order_created"} <= set(queues)

    async def poison() -> None:
        broker = await open_broker(load().effective_broker_url)
        try:

            async def refuse(_d: Delivery) -> None:
                raise PermanentError("no such customer")

            sub = await broker.subscribe(
                "payments.order_created", "orders", ["order.created"], refuse, retry=FAST
            )
            await broker.publish("orders", [Message.json("order.created", order_payload("o-9"))])
            await dead_letters(broker, "payments.order_created", 1)
            await sub.stop()
        finally:
            await broker.close()

    asyncio.run(poison())
    [letter] = run("dlq", "list", "--json")
    assert letter["queue"] == "payments.order_created" and "no such customer" in letter["error"]
    assert "replayed 1" in run("dlq", "replay", "--all")


def test_order_list_pages() -> None:
    made = [
        run(
            "order", "create", "--user", "bo", "--email", "bo@example.com", "--item", f"SKU-{n}:1:5", "--json"
        )
        for n in range(1, 4)
    ]
    newest_first = [o["id"] for o in reversed(made)]
    assert [o["id"] for o in run("order", "list", "--user", "bo", "--limit", "2", "--json")] == newest_first[
        :2
    ]
    assert [
        o["id"] for o in run("order", "list", "--user", "bo", "--limit", "2", "--all", "--json")
    ] == newest_first
    table = run("order", "list", "--user", "bo", "--limit", "2")
    assert "more: ordermesh order list --user bo --after " in table
