"""``ordermesh saga show|list``: where each order's fulfilment is, from the order service's saga log
(its own database; no server needs to be running)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from ordermesh.errors import NotFound, ValidationError
from ordermesh.kit.console import JsonFlag, console, fail, on_database, print_json

app = typer.Typer(help="Order sagas: where each order's fulfilment is.", no_args_is_help=True)


def _saga_table(records: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for column in ("order", "style", "state", "steps", "compensations", "reason", "updated"):
        table.add_column(column, overflow="fold")
    for r in records:
        steps = ", ".join(
            f"{s['name']}:{s['outcome']}" + (f"x{s['attempts']}" if s["attempts"] > 1 else "")
            for s in r["steps"]
        )
        undone = ", ".join(f"{s['name']}:{s['outcome']}" for s in r["compensations"])
        table.add_row(r["saga_id"], r["style"], r["state"], steps, undone, r["reason"], r["updated_at"])
    return table


@app.command("show")
def saga_show(order_id: str, as_json: JsonFlag = False) -> None:
    """One order's saga: its state, every step and compensation (attempts, times, outcome)."""
    from ordermesh.saga import SqlSagaStore

    async def work(db: Any) -> Any:
        return await (await SqlSagaStore.open(db)).get(order_id)

    record = on_database("orders", work)
    if record is None:
        fail(NotFound(f"order {order_id} has no saga"))
    doc = record.to_json()
    if as_json:
        print_json(doc)
        return
    console.print(_saga_table([doc], f"saga of order {order_id}"))
    for s in doc["steps"] + doc["compensations"]:
        console.print(
            f"  {s['kind']:<12} {s['name']:<10} {s['service']:<10} {s['outcome']:<9} "
            f"attempts {s['attempts']}  {s['started_at'] or '-'} -> {s['ended_at'] or '-'}  {s['detail']}",
            highlight=False,
        )


@app.command("list")
def saga_list(
    state: Annotated[
        str | None, typer.Option(help="running, compensating, completed, compensated or failed")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    as_json: JsonFlag = False,
) -> None:
    """Sagas, most recently moved first: find the stuck (running) and the failed."""
    from ordermesh.saga import TERMINAL, SqlSagaStore

    states = {"running", "compensating", *TERMINAL}
    if state is not None and state not in states:
        fail(ValidationError(f"--state must be one of {', '.join(sorted(states))}, not {state!r}"))

    async def work(db: Any) -> Any:
        return await (await SqlSagaStore.open(db)).list(state, limit)  # type: ignore[arg-type]

    docs = [r.to_json() for r in on_database("orders", work)]
    if as_json:
        print_json(docs)
        return
    console.print(_saga_table(docs, f"sagas ({len(docs)}{', ' + state if state else ''})"))


__all__ = ["app"]
