"""Operator commands of the shipping service (mounted as ``ordermesh shipments``). They read the
service's own database (``ORDERMESH_SHIPPING_DATABASE_URL``, else the shared settings): no server
needs to be running."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ordermesh.config import load
from ordermesh.db import connect
from ordermesh.errors import NotFound, OrdermeshError
from ordermesh.services.shipping.domain import Shipment, check_order_id
from ordermesh.services.shipping.schemas import shipment_doc
from ordermesh.services.shipping.store import ShipmentStore

app = typer.Typer(help="Inspect shipments.", no_args_is_help=True)
console = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


@app.callback()
def _group() -> None:
    """Inspect shipments (the shipping service's database)."""


async def _find(order_id: str) -> Shipment:
    check_order_id(order_id)
    db = await connect(load().service_database_url("shipping"))
    try:
        store = ShipmentStore(db)
        await store.migrate()  # a database the service never ran on: no shipments, not an error
        shipment = await store.get(order_id)
    finally:
        await db.close()
    if shipment is None:
        raise NotFound(f"order {order_id} has no shipment")
    return shipment


def _table(doc: dict[str, object]) -> Table:
    table = Table(title=f"shipment of order {doc['order_id']}", show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in doc.items():
        if key == "items" and isinstance(value, list):
            shown = ", ".join(f"{i['quantity']} x {i['sku']}" for i in value)
        elif key == "address" and isinstance(value, dict):
            shown = ", ".join(str(v) for v in value.values() if v)
        else:
            shown = "" if value is None else str(value)
        table.add_row(key, shown)
    return table


@app.command("show")
def show(
    order_id: Annotated[str, typer.Argument(help="the order whose shipment to show")],
    as_json: Annotated[bool, typer.Option("--json", help="print the shipment as JSON")] = False,
) -> None:
    """Show an order's shipment: status, tracking id, items, address. Exit 1 if it has none."""
    try:
        shipment = asyncio.run(_find(order_id))
    except OrdermeshError as exc:
        stderr.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from exc
    doc = shipment_doc(shipment)
    if as_json:
        print(json.dumps(doc))
    else:
        console.print(_table(doc))
