"""``ordermesh payments show``: an order's payment, read from the service's own database."""

from __future__ import annotations

import asyncio
import json

from typer.testing import CliRunner

from ordermesh.clock import FakeClock
from ordermesh.services.payments.cli import app
from tests.helpers import Provider, open_service


def seed(sql_url: str) -> None:
    async def main() -> None:
        service = await open_service(sql_url, Provider(), FakeClock())
        try:
            await service.process_payment("o-1", 1250, "EUR")
            await service.refund("o-1", "out of stock")
            await service.process_payment("o-2", 200_000, "USD")
        finally:
            await service.store.db.close()

    asyncio.run(main())


def test_show_prints_charged_refunded_and_status(sql_url: str) -> None:
    seed(sql_url)
    runner = CliRunner()
    env = {"ORDERMESH_PAYMENTS_DATABASE_URL": sql_url, "COLUMNS": "200"}

    as_json = runner.invoke(app, ["show", "o-1", "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.stdout)
    assert (doc["status"], doc["charged"], doc["refunded"]) == ("refunded", 1250, 1250)
    assert doc["currency"] == "EUR"
    assert [(e["kind"], e["amount"]) for e in doc["ledger"]] == [("charge", 1250), ("refund", 1250)]

    declined = json.loads(runner.invoke(app, ["show", "o-2", "--json"], env=env).stdout)
    assert (declined["status"], declined["charged"], declined["ledger"]) == ("declined", 0, [])
    assert "above the limit" in declined["decline_reason"]

    table = runner.invoke(app, ["show", "o-1"], env=env)
    assert table.exit_code == 0
    assert "refunded" in table.output and "1250" in table.output and "out of stock" in table.output

    missing = runner.invoke(app, ["show", "nope"], env=env)
    assert missing.exit_code == 1 and "has no payment" in missing.output
    invalid = runner.invoke(app, ["show", " o-1"], env=env)
    assert invalid.exit_code == 2 and "order_id" in invalid.output  # bad input: a usage error
