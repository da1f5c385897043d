"""Operator commands of the shipping service (mounted as ``ordermesh shipments``). They read the
service's own database (``ORDERMESH_SHIPPING_DATABASE_URL``, else the shared settings): no server
needs to be running."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ordermesh.db import SqlDb
from ordermesh.errors import NotFound
from ordermesh.kit.console import JsonFlag, console, on_database, print_json
from ordermesh.services.shipping.domain import Shipment, check_order_id
from ordermesh.services.shipping.schemas import shipment_doc
from ordermesh.services.shipping.store import ShipmentStore

app = typer.Typer(help="Inspect shipments.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Inspect shipments (the shipping service's database)."""


async def _find(db: SqlDb, order_id: str) -> Shipment:
    check_order_id(order_id)
    store = ShipmentStore(db)
    await store.migrate()  # a database the service never ran on: no shipments, not an error
    shipment = await store.get(order_id)
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
    as_json: JsonFlag = False,
) -> None:
    """Show an order's shipment: status, tracking id, items, address. Exit 1 if it has none."""
    shipment = on_database("shipping", lambda db: _find(db, order_id))
    doc = shipment_doc(shipment)
    if as_json:
        print_json(doc)
    else:
        console.print(_table(doc))
