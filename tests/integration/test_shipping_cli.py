"""`ordermesh shipments show` reads the shipping database directly: a table, or JSON with --json."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from ordermesh.db import connect
from ordermesh.messaging.outbox import SqlOutbox
from ordermesh.services.shipping.cli import app
from ordermesh.services.shipping.domain import Address, Item
from ordermesh.services.shipping.service import ShippingService


async def _schedule(url: str) -> str:
    db = await connect(url)
    try:
        service = await ShippingService.open(db, await SqlOutbox.open(db))
        shipment, _ = await service.schedule(
            "o-1", [Item("SKU-1", 2)], Address("Ada", "1 Road", "Town", "1000", "DE")
        )
    finally:
        await db.close()
    assert shipment.tracking_id is not None
    return shipment.tracking_id


@pytest.fixture
def runner(sql_url: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("ORDERMESH_SHIPPING_DATABASE_URL", sql_url)
    return CliRunner()


def test_show_json_prints_the_shipment(runner: CliRunner, sql_url: str) -> None:
    tracking = asyncio.run(_schedule(sql_url))
    result = runner.invoke(app, ["show", "o-1", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["tracking_id"] == tracking and doc["status"] == "scheduled"
    assert doc["items"] == [{"sku": "SKU-1", "quantity": 2}] and doc["address"]["country"] == "DE"


def test_show_prints_a_table(runner: CliRunner, sql_url: str) -> None:
    tracking = asyncio.run(_schedule(sql_url))
    result = runner.invoke(app, ["show", "o-1"], terminal_width=60)
    assert result.exit_code == 0, result.output
    assert tracking in result.stdout and "2 x SKU-1" in result.stdout and "scheduled" in result.stdout


def test_an_order_without_shipment_is_one_line_and_exit_1(runner: CliRunner) -> None:
    result = runner.invoke(app, ["show", "o-404", "--json"])
    assert result.exit_code == 1
    assert result.stdout == "" and "order o-404 has no shipment" in result.stderr
    bad = runner.invoke(app, ["show", "has space"])
    assert bad.exit_code == 2 and "invalid order id" in bad.stderr  # bad input: a usage error
