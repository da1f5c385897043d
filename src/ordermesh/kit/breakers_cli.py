"""``ordermesh breakers``: every running service's downstreams — circuit breaker state, failures,
calls refused, bulkhead use, retries — from each one's ``GET /admin/breakers`` (``kit.downstreams``),
asked with the CLI's service token (``kit.faults_cli.Admin``)."""

from __future__ import annotations

import asyncio
from typing import Any

from rich.table import Table

from ordermesh.config import SERVICES
from ordermesh.errors import NotFound, OrdermeshError
from ordermesh.kit.console import JsonFlag, console, print_json, run
from ordermesh.kit.downstreams import BREAKERS_PATH
from ordermesh.kit.faults_cli import Admin, admin_settings, with_admin

_STYLE = {"open": "red", "half_open": "yellow", "closed": "green"}


async def _gather(admin: Admin) -> list[dict[str, Any]]:
    async def one(service: str) -> list[dict[str, Any]]:
        try:
            answer = await admin.call(service, "GET", path=BREAKERS_PATH)
        except NotFound:  # a service that calls no other
            return []
        except OrdermeshError as exc:
            return [{"service": service, "reachable": False, "error": str(exc)}]
        return [{"service": service, "reachable": True, **row} for row in answer["downstreams"]]

    rows = await asyncio.gather(*(one(service) for service in SERVICES))
    return [row for found in rows for row in found]


def breakers(as_json: JsonFlag = False) -> None:
    """Every downstream's circuit breaker and bulkhead, as each running service sees it."""
    rows = run(with_admin(admin_settings(), _gather))
    if as_json:
        print_json(rows)
        return
    table = Table(title="circuit breakers")
    columns = ("caller", "downstream", "state", "in a row", "failures", "refused", "opened", "in flight")
    for column in (*columns, "retries"):
        table.add_column(column, justify="left" if column in columns[:3] else "right")
    for row in rows:
        if not row["reachable"]:
            table.add_row(row["service"], "-", "[dim]not running[/dim]", *[""] * 6)
            continue
        style = _STYLE.get(row["state"], "dim")
        table.add_row(
            row["service"],
            row["downstream"],
            f"[{style}]{row['state']}[/{style}]",
            str(row["consecutive_failures"]),
            str(row["failures"]),
            str(row["rejected"] + row["bulkhead_rejected"]),
            str(row["opened"]),
            f"{row['in_flight']}/{row['bulkhead_limit']}",
            f"{row['retries']} ({row['retry_budget_exhausted']} over budget)",
        )
    console.print(table)


__all__ = ["breakers"]
