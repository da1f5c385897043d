"""Operator commands for orders and their read models (``ordermesh order …``, ``ordermesh events``,
``ordermesh projections …``). They work directly on the order service's database, like an
operator's console: no server needs to be running, and a running one picks the changes up through
its subscriptions."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from ordermesh.auth import Tokens, check_user_id
from ordermesh.errors import ConfigError, OrdermeshError, ValidationError
from ordermesh.kit.console import JsonFlag, console, fail, print_json, run
from ordermesh.kit.console import settings as console_settings
from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.runtime import OrderSystem, build_order_system

order_app = typer.Typer(help="Create and inspect orders.", no_args_is_help=True)
projections_app = typer.Typer(help="Operate read models.", no_args_is_help=True)
T = TypeVar("T")


def run_on_orders(work: Callable[[OrderSystem], Awaitable[T]]) -> T:
    """Build the order system on the configured database, run ``work``, close, map errors."""

    async def main() -> T:
        settings = console_settings()
        system = await build_order_system(settings.effective_database_url)
        try:
            return await work(system)
        finally:
            await system.close()

    return run(main())


def _parse_item(text: str) -> OrderLine:
    parts = text.rsplit(":", 2)
    # isdecimal and ASCII: "²" is a digit to isdigit() but no number to int().
    if len(parts) != 3 or not all(p.isascii() and p.isdecimal() for p in parts[1:]):
        raise typer.BadParameter(f"{text!r}: expected SKU:QUANTITY:UNIT_PRICE, e.g. SKU-1:2:1250")
    return OrderLine(parts[0], int(parts[1]), int(parts[2]))


def _order_table(orders: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    table.add_column("id", overflow="fold", min_width=36)
    for column in ("user", "email", "status", "total", "items", "created"):
        table.add_column(column, overflow="fold")
    for o in orders:
        items = ", ".join(f"{i['quantity']} x {i['sku']}" for i in o["items"])
        table.add_row(
            o["id"],
            o["user_id"],
            o["user_email"],
            o["status"],
            f"{o['total'] / 100:.2f} {o['currency']}",
            items,
            o["created_at"] or "",
        )
    return table


@order_app.command("create")
def order_create(
    user: Annotated[str, typer.Option("--user", help="the ordering user id")],
    email: Annotated[str, typer.Option("--email", help="where confirmations go")],
    item: Annotated[list[str], typer.Option("--item", help="SKU:QUANTITY:UNIT_PRICE (minor units); repeat")],
    currency: Annotated[str, typer.Option(help="ISO 4217 code")] = "EUR",
    as_json: JsonFlag = False,
) -> None:
    """Create an order."""
    lines = [_parse_item(i) for i in item]
    try:
        check_user_id(user)  # an order its owner could never read over REST or gRPC is refused
    except ValidationError as exc:
        fail(exc)
    order = run_on_orders(lambda s: s.service.create_order(user, email, currency, lines))
    if as_json:
        print_json(order)
        return
    console.print(_order_table([order], "created"))


@order_app.command("show")
def order_show(order_id: str, as_json: JsonFlag = False) -> None:
    """Show one order from the read model."""
    order = run_on_orders(lambda s: s.service.get_order(order_id, None))
    if as_json:
        print_json(order)
        return
    console.print(_order_table([order], f"order {order_id}"))


@order_app.command("list")
def order_list(
    user: Annotated[str, typer.Option("--user", help="the user id")],
    limit: Annotated[int, typer.Option(min=1, max=200, help="orders per page")] = 50,
    after: Annotated[str | None, typer.Option(help="the page after this cursor (a page's `next`)")] = None,
    every: Annotated[bool, typer.Option("--all", help="every page, not just one")] = False,
    as_json: JsonFlag = False,
) -> None:
    """List a user's orders, newest first, a page at a time."""

    async def pages(system: OrderSystem) -> tuple[list[dict[str, Any]], str | None]:
        orders: list[dict[str, Any]] = []
        cursor = after
        while True:
            page = orjson.loads(await system.service.user_orders_json(user, None, limit, cursor))
            orders += page["orders"]
            cursor = page["next"]
            if not every or cursor is None:
                return orders, cursor

    orders, cursor = run_on_orders(pages)
    if as_json:
        print_json(orders)
        return
    console.print(_order_table(orders, f"orders of {user} ({len(orders)})"))
    if cursor is not None:
        console.print(f"more: ordermesh order list --user {user} --after {cursor}  (or --all)")


@order_app.command("watch")
def order_watch(
    user: Annotated[str | None, typer.Option("--user", help="follow every order of this user")] = None,
    order: Annotated[str | None, typer.Option("--order", help="follow one order")] = None,
    after: Annotated[int, typer.Option(help="start after this position (0: the whole history)")] = 0,
    target: Annotated[str | None, typer.Option(help="gRPC host:port (default: ORDERMESH_GRPC_PORT)")] = None,
    token: Annotated[
        str | None, typer.Option(help="bearer token (default: a dev token for the owner)")
    ] = None,
) -> None:
    """Follow StreamOrderUpdates live; resumes by itself across server restarts. Ctrl-C stops."""
    from ordermesh.client.grpc import OrdersGrpcClient

    if (user is None) == (order is None):
        raise typer.BadParameter("give exactly one of --user or --order")
    settings = console_settings()
    if token is None:
        if user is None:
            raise typer.BadParameter("--order needs --token (the owner's)")
        token = Tokens(settings).issue(user)

    async def follow() -> None:
        async with OrdersGrpcClient(target or f"{settings.http_host}:{settings.grpc_port}", token) as client:
            async for u in client.watch(user_id=user, order_id=order, after_position=after):
                o = u["order"]
                console.print(
                    f"{u['position']:>8}  {u['occurred_at']}  {u['order_id']}  v{u['version']:<3} "
                    f"{u['event_type']:<24} -> {o['status']:<15} {o['total'] / 100:.2f} {o['currency']}",
                    highlight=False,
                )

    try:
        asyncio.run(follow())
    except KeyboardInterrupt:
        pass
    except OrdermeshError as exc:
        fail(exc)


def events(order_id: str, as_json: JsonFlag = False) -> None:
    """Show an order's event history."""
    history = run_on_orders(lambda s: s.service.history(order_id, None))
    if as_json:
        print_json(history)
        return
    table = Table(title=f"events of order {order_id}")
    for column in ("version", "position", "type", "occurred at", "data"):
        table.add_column(column)
    for e in history:
        table.add_row(
            str(e["version"]),
            str(e["position"]),
            e["type"],
            e["occurred_at"],
            orjson.dumps(e["data"]).decode(),
        )
    console.print(table)


@projections_app.command("rebuild")
def projections_rebuild(name: str) -> None:
    """Rebuild read model NAME from the first event, beside the live one, then swap."""

    async def work(system: OrderSystem) -> int:
        try:
            projector = system.projector(name)
        except KeyError as exc:
            fail(ConfigError(exc.args[0]))  # an unknown name: a usage error
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task(f"rebuilding {name}", total=None)
            replayed = await projector.rebuild(
                lambda done, total: bar.update(task, completed=done, total=total)
            )
        return replayed

    replayed = run_on_orders(work)
    console.print(f"rebuilt [bold]{name}[/bold] from {replayed} events; it is live now")


@projections_app.command("list")
def projections_list(as_json: JsonFlag = False) -> None:
    """Show each read model's live generation and checkpoint."""

    async def work(system: OrderSystem) -> list[tuple[str, int, int, int]]:
        head = await system.store.head_position()
        out = []
        for p in system.projectors:
            state = await system.docs.state(p.name)
            out.append((p.name, state.generation, state.position, head))
        return out

    rows = run_on_orders(work)
    if as_json:
        print_json([dict(zip(("name", "generation", "position", "head"), row, strict=True)) for row in rows])
        return
    table = Table(title="projections")
    for column in ("name", "generation", "position", "head"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(v) for v in row))
    console.print(table)


__all__ = ["events", "order_app", "projections_app", "run_on_orders"]
