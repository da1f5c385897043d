"""Operator commands for the inventory (mounted as ``ordermesh stock``): they work on the service's
own database (``settings.service_database_url("inventory")``), running service or not.

``set`` is one atomic statement, safe beside a running service: it sets the available units and
leaves reserved and shipped alone, so "the stock that was set" (available + reserved + shipped,
the invariant's total) becomes QTY plus what is held or shipped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Annotated, TypeVar

import typer
from rich.table import Table

from ordermesh.db import SqlDb
from ordermesh.kit.console import JsonFlag, console, on_database, print_json
from ordermesh.messaging.outbox import SqlOutbox
from ordermesh.services.inventory.domain import StockLevel
from ordermesh.services.inventory.store import InventoryStore

app = typer.Typer(help="Inspect and set stock levels.", no_args_is_help=True)
T = TypeVar("T")


def _run(work: Callable[[InventoryStore], Awaitable[T]]) -> T:
    # No messages are sent from here: the outbox table is the service's to create and publish.
    return on_database("inventory", lambda db: _open(db, work))


async def _open(db: SqlDb, work: Callable[[InventoryStore], Awaitable[T]]) -> T:
    return await work(await InventoryStore.open(db, SqlOutbox(db)))


def _table(levels: list[StockLevel], title: str) -> Table:
    table = Table(title=title)
    table.add_column("sku", overflow="fold")
    for column in ("available", "reserved", "shipped", "total"):
        table.add_column(column, justify="right", overflow="fold")
    for s in levels:
        table.add_row(s.sku, str(s.available), str(s.reserved), str(s.shipped), str(s.total))
    return table


@app.command("set")
def set_stock(
    sku: Annotated[str, typer.Argument(help="the SKU (created if new)")],
    qty: Annotated[int, typer.Argument(min=0, help="its available units from now on")],
    as_json: JsonFlag = False,
) -> None:
    """Set SKU's available units to QTY (reserved and shipped units are not touched)."""
    level = _run(lambda store: store.set_available(sku, qty))
    if as_json:
        print_json(asdict(level))
    else:
        console.print(_table([level], f"stock of {sku}"))


@app.command("show")
def show(
    as_json: JsonFlag = False,
) -> None:
    """Every SKU's available, reserved and shipped units."""
    levels = _run(lambda store: store.stock())
    if as_json:
        print_json([asdict(level) for level in levels])
    else:
        console.print(_table(levels, f"stock ({len(levels)} SKUs)"))
