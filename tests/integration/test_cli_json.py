"""The operator CLI for scripts: --json on every command that prints data, JSON (not Python
reprs) in tables, and nothing to replay is not an error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ordermesh.cli import app

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
