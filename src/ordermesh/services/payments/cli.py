"""Operator commands for payments (mounted as ``ordermesh payments``): they read the service's own
database (``settings.service_database_url("payments")``), running service or not."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from ordermesh.db import SqlDb
from ordermesh.errors import NotFound
from ordermesh.kit.console import JsonFlag, console, fail, on_database, print_json
from ordermesh.services.payments.domain import Payment, check_order_id
from ordermesh.services.payments.store import LedgerEntry, PaymentStore

app = typer.Typer(help="Inspect payments and their ledger.", no_args_is_help=True)
T = TypeVar("T")


@app.callback()
def payments() -> None:
    """Inspect payments and their ledger (the payment service's own database)."""
    # A group even with one command: ``ordermesh payments show ID``, not ``ordermesh payments ID``.


def _run(work: Callable[[PaymentStore], Awaitable[T]]) -> T:
    return on_database("payments", lambda db: _open(db, work))


async def _open(db: SqlDb, work: Callable[[PaymentStore], Awaitable[T]]) -> T:
    return await work(await PaymentStore.open(db))


def payment_json(payment: Payment, ledger: list[LedgerEntry]) -> dict[str, Any]:
    return {
        "order_id": payment.order_id,
        "payment_id": payment.payment_id,
        "status": payment.status.value,
        "amount": payment.amount,
        "currency": payment.currency,
        "charged": payment.charged,
        "refunded": payment.refunded,
        "decline_reason": payment.decline_reason,
        "refund_reason": payment.refund_reason,
        "created_at": payment.created_at.isoformat(),
        "updated_at": payment.updated_at.isoformat(),
        "ledger": [
            {
                "kind": e.kind,
                "amount": e.amount,
                "currency": e.currency,
                "recorded_at": e.recorded_at.isoformat(),
            }
            for e in ledger
        ],
    }


def _table(doc: dict[str, Any]) -> Table:
    table = Table(title=f"payment of order {doc['order_id']}")
    table.add_column("field", overflow="fold")
    table.add_column("value", overflow="fold")
    for key, value in doc.items():
        if key not in ("order_id", "ledger"):
            table.add_row(key, str(value))
    for e in doc["ledger"]:
        table.add_row(f"ledger {e['kind']}", f"{e['amount']} {e['currency']} at {e['recorded_at']}")
    return table


@app.command("show")
def show(
    order_id: Annotated[str, typer.Argument(help="the order whose payment to show")],
    as_json: JsonFlag = False,
) -> None:
    """An order's payment: status, charged and refunded amounts, and its ledger entries."""

    async def work(store: PaymentStore) -> tuple[Payment | None, list[LedgerEntry]]:
        check_order_id(order_id)
        return await store.get(order_id), await store.ledger(order_id)

    payment, ledger = _run(work)
    if payment is None:
        fail(NotFound(f"order {order_id!r} has no payment"))
    doc = payment_json(payment, ledger)
    if as_json:
        print_json(doc)
    else:
        console.print(_table(doc))


__all__ = ["app"]
