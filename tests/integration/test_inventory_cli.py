"""`ordermesh stock set|show` (the inventory's typer app) on the service's own database, SQLite and
PostgreSQL, alone and beside the running service."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from typer.testing import CliRunner

from ordermesh.client.inventory import InventoryClient
from ordermesh.config import Settings
from ordermesh.db import connect
from ordermesh.kit.testing import running
from ordermesh.messaging.outbox import SqlOutbox
from ordermesh.services.inventory.cli import app
from ordermesh.services.inventory.domain import Line
from ordermesh.services.inventory.spec import SPEC
from ordermesh.services.inventory.store import InventoryStore

T = TypeVar("T")


@pytest.fixture
def runner(sql_url: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("ORDERMESH_INVENTORY_DATABASE_URL", sql_url)
    return CliRunner()


def with_store(sql_url: str, work: Callable[[InventoryStore], Awaitable[T]]) -> T:
    async def main() -> T:
        db = await connect(sql_url)
        try:
            return await work(await InventoryStore.open(db, await SqlOutbox.open(db)))
        finally:
            await db.close()

    return asyncio.run(main())


def show(runner: CliRunner) -> list[dict[str, object]]:
    result = runner.invoke(app, ["show", "--json"])
    assert result.exit_code == 0, result.output
    shown: list[dict[str, object]] = json.loads(result.stdout)
    return shown


def test_set_creates_and_updates_and_show_lists_every_sku(runner: CliRunner) -> None:
    assert show(runner) == []
    assert runner.invoke(app, ["set", "B-2", "7"]).exit_code == 0
    result = runner.invoke(app, ["set", "A-1", "3", "--json"])
    assert json.loads(result.stdout) == {"sku": "A-1", "available": 3, "reserved": 0, "shipped": 0}
    runner.invoke(app, ["set", "A-1", "0"])
    assert show(runner) == [
        {"sku": "A-1", "available": 0, "reserved": 0, "shipped": 0},
        {"sku": "B-2", "available": 7, "reserved": 0, "shipped": 0},
    ]
    table = runner.invoke(app, ["show"]).stdout
    assert "B-2" in table and "7" in table and "2 SKUs" in table


def test_set_changes_available_only_so_the_total_is_what_was_set_plus_held(
    runner: CliRunner, sql_url: str
) -> None:
    async def prepare(store: InventoryStore) -> None:
        await store.set_available("A", 10)
        await store.reserve("o-1", [Line("A", 3)])
        await store.reserve("o-2", [Line("A", 2)])
        await store.commit("o-2")

    with_store(sql_url, prepare)
    result = runner.invoke(app, ["set", "A", "50", "--json"])
    assert json.loads(result.stdout) == {"sku": "A", "available": 50, "reserved": 3, "shipped": 2}


def test_bad_input_is_refused_with_one_line(runner: CliRunner) -> None:
    negative = runner.invoke(app, ["set", "A", "-1"])
    assert negative.exit_code == 2 and show(runner) == []
    bad = runner.invoke(app, ["set", "no spaces", "1"])
    assert bad.exit_code == 2 and "error:" in bad.output and "sku" in bad.output  # bad input: a usage error
    assert "Traceback" not in bad.output


async def test_set_beside_the_running_service_is_atomic(runner: CliRunner, sql_url: str) -> None:
    settings = Settings(inventory_database_url=sql_url, broker_url="memory://")
    async with (
        running(SPEC, settings) as rt,
        InventoryClient(rt.grpc_target, rt.tokens.issue_service("orders")) as client,
    ):
        setting = asyncio.to_thread(runner.invoke, app, ["set", "SKU-1", "500", "--json"])
        reserves = [client.reserve(f"o-{n}", [("SKU-1", 10)]) for n in range(30)]
        outcome, results = await asyncio.gather(setting, asyncio.gather(*reserves))
        assert outcome.exit_code == 0, outcome.output
        [level] = await client.stock(["SKU-1"])
    at_set = json.loads(outcome.stdout)
    assert at_set["available"] == 500
    # The stock that was set: 500 plus what was held at that moment; reservations after it took
    # their units from the 500, so the sum is unchanged since.
    assert level.available + level.reserved + level.shipped == 500 + at_set["reserved"]
    assert level.reserved == 10 * sum(r.reserved for r in results) and level.available >= 0
