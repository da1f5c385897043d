"""The ``ordermesh`` command: run the system, mint dev tokens, operate orders and read models.

Order and projection commands work directly on the service's database
(``ORDERMESH_DATABASE_URL``), like an operator's console: no server needs to be running, and a
running one picks the changes up through its subscriptions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from ordermesh.auth import Tokens, check_user_id
from ordermesh.config import ServiceName, Settings, redact_urls
from ordermesh.errors import ConfigError, NotFound, OrdermeshError, ValidationError
from ordermesh.kit import breakers_cli, faults_cli
from ordermesh.kit.console import JsonFlag, console, fail, on_database, print_json, run
from ordermesh.kit.running import as_running
from ordermesh.services.inventory import cli as inventory_cli
from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.runtime import OrderSystem, build_order_system
from ordermesh.services.payments import cli as payments_cli
from ordermesh.services.shipping import cli as shipping_cli

if TYPE_CHECKING:
    from ordermesh.messaging.port import Broker, DeadLetter

app = typer.Typer(
    help="ordermesh: order processing over REST, gRPC, messages, events and sagas.", no_args_is_help=True
)
order_app = typer.Typer(help="Create and inspect orders.", no_args_is_help=True)
projections_app = typer.Typer(help="Operate read models.", no_args_is_help=True)
app.add_typer(order_app, name="order")
app.add_typer(projections_app, name="projections")
T = TypeVar("T")


def _run(work: Callable[[OrderSystem], Awaitable[T]]) -> T:
    """Build the order system on the configured database, run ``work``, close, map errors."""

    async def main() -> T:
        settings = _settings()
        system = await build_order_system(settings.effective_database_url)
        try:
            return await work(system)
        finally:
            await system.close()

    return run(main())


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="interface to bind (ORDERMESH_HTTP_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="REST port (ORDERMESH_HTTP_PORT, default 8000)")] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="gRPC port (ORDERMESH_GRPC_PORT, default 50051)")
    ] = None,
) -> None:
    """Run all five services as supervised processes with embedded defaults; Ctrl-C stops them."""
    from ordermesh.runner import run_system

    raise typer.Exit(run_system(_settings(), host, port, grpc_port, console))


def _settings() -> Settings:
    """The settings of the environment; a bad value is one line and exit 2 (a usage error)."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        fail(exc)


@app.command("run")
def run_service(
    name: Annotated[
        ServiceName, typer.Argument(help="orders, payments, inventory, shipping or notifications")
    ],
) -> None:
    """Run one service in the foreground, configured by the environment (the defaults of `up`)."""
    from ordermesh import catalog
    from ordermesh.kit.process import main as run_main

    raise typer.Exit(run_main(catalog.spec(name)))


@app.command()
def token(
    user_id: str,
    ttl_hours: Annotated[float, typer.Option(help="lifetime in hours")] = 12.0,
) -> None:
    """Print a development bearer token for USER_ID (signed with ORDERMESH_JWT_SECRET)."""
    tokens = Tokens(_settings())
    cap = tokens.max_ttl.total_seconds() / 3600
    if not 0 < ttl_hours <= cap:  # NaN fails this too, before timedelta could overflow on 1e20
        fail(
            ValidationError(
                f"--ttl-hours must be more than 0 and at most {cap:g} (ORDERMESH_JWT_MAX_TTL_HOURS)"
            )
        )
    try:
        value = tokens.issue(user_id, ttl=timedelta(hours=ttl_hours))
    except OrdermeshError as exc:
        fail(exc)
    print(value)


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
    order = _run(lambda s: s.service.create_order(user, email, currency, lines))
    if as_json:
        print_json(order)
        return
    console.print(_order_table([order], "created"))


@order_app.command("show")
def order_show(order_id: str, as_json: JsonFlag = False) -> None:
    """Show one order from the read model."""
    order = _run(lambda s: s.service.get_order(order_id, None))
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

    orders, cursor = _run(pages)
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
    settings = _settings()
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


@app.command()
def events(order_id: str, as_json: JsonFlag = False) -> None:
    """Show an order's event history."""
    history = _run(lambda s: s.service.history(order_id, None))
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

    replayed = _run(work)
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

    rows = _run(work)
    if as_json:
        print_json([dict(zip(("name", "generation", "position", "head"), row, strict=True)) for row in rows])
        return
    table = Table(title="projections")
    for column in ("name", "generation", "position", "head"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(v) for v in row))
    console.print(table)


dlq_app = typer.Typer(help="Inspect and replay dead letters.", no_args_is_help=True)
outbox_app = typer.Typer(help="The order service's outbox relay.", no_args_is_help=True)
mail_app = typer.Typer(help="The embedded mail sink.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
# Each service's operator commands live with the service, on its own database.
app.add_typer(payments_cli.app, name="payments")
app.add_typer(inventory_cli.app, name="stock")
app.add_typer(shipping_cli.app, name="shipments")
app.add_typer(outbox_app, name="outbox")
app.add_typer(mail_app, name="mail")
app.add_typer(faults_cli.app, name="faults")
app.command("breakers")(breakers_cli.breakers)


def _known_queues() -> list[str]:
    from ordermesh.services.notifications.service import QUEUES

    return list(QUEUES)


def _with_broker(work: Callable[[Broker], Awaitable[T]]) -> T:
    """Open the configured broker, run ``work``, close; errors mapped as ``_run`` maps them."""

    async def main() -> T:
        broker = await _open_configured_broker()
        try:
            return await work(broker)
        finally:
            await broker.close()

    return run(main())


async def _letters(broker: Broker, queue: str | None) -> list[DeadLetter]:
    letters: list[DeadLetter] = []
    for name in [queue] if queue else _known_queues():
        letters += await broker.dead_letters(name)
    return letters


@dlq_app.command("list")
def dlq_list(
    queue: Annotated[str | None, typer.Argument(help="a consumer queue (default: all known)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List dead letters with their reason."""
    letters = _with_broker(lambda broker: _letters(broker, queue))
    if as_json:
        print_json([_letter_json(d) for d in letters])
        return
    table = Table(title=f"dead letters ({len(letters)})")
    for column in ("id", "queue", "routing key", "attempts", "error"):
        table.add_column(column, overflow="fold")
    for d in letters:
        table.add_row(d.id, d.queue, d.original_routing_key, str(d.attempts), d.error)
    console.print(table)


def _letter_json(d: DeadLetter) -> dict[str, Any]:
    m = d.message
    return {
        "id": d.id,
        "queue": d.queue,
        "error": d.error,
        "attempts": d.attempts,
        "original_exchange": d.original_exchange,
        "original_routing_key": d.original_routing_key,
        "type": m.type,
        "schema_version": m.schema_version,
        "occurred_at": m.occurred_at.isoformat(),
        "correlation_id": m.correlation_id,
        "headers": dict(m.headers),
        "body": m.body.decode(errors="replace"),
    }


@dlq_app.command("show")
def dlq_show(message_id: str, as_json: JsonFlag = False) -> None:
    """Show one dead letter: envelope, headers, body."""
    found = [d for d in _with_broker(lambda broker: _letters(broker, None)) if d.id == message_id]
    if not found:
        fail(NotFound(f"no dead letter {message_id}"))
    d = found[0]
    if as_json:
        print_json(_letter_json(d))
        return
    m = d.message
    console.print(f"id            {d.id}\nqueue         {d.queue}\nerror         {d.error}")
    console.print(
        f"attempts      {d.attempts}\noriginal      {d.original_exchange} / {d.original_routing_key}"
    )
    console.print(
        f"type          {m.type} (schema v{m.schema_version})\noccurred at   {m.occurred_at.isoformat()}"
    )
    console.print(f"correlation   {m.correlation_id}\nheaders       {dict(m.headers)}")
    console.print(m.body.decode(errors="replace"), soft_wrap=True)


@dlq_app.command("replay")
def dlq_replay(
    message_id: Annotated[str | None, typer.Argument(help="the dead letter's id")] = None,
    all_: Annotated[bool, typer.Option("--all", help="replay every dead letter")] = False,
    queue: Annotated[str | None, typer.Option(help="only this queue")] = None,
) -> None:
    """Send dead letters back to the queue they died in."""
    if (message_id is None) == (not all_):
        raise typer.BadParameter("give a message id or --all")

    async def work(broker: Broker) -> int:
        letters = [d for d in await _letters(broker, queue) if all_ or d.id == message_id]
        for d in letters:
            await broker.replay(d.queue, d.id)
        return len(letters)

    count = _with_broker(work)
    if count == 0 and all_:
        console.print("no dead letters: nothing to replay")
        return
    if count == 0:
        fail(NotFound(f"no dead letter {message_id} to replay"))
    console.print(f"replayed {count} dead letter(s)")


async def _open_configured_broker() -> Broker:
    """The broker of ``ORDERMESH_BROKER_URL``; a malformed URL is a usage error, not a traceback."""
    from ordermesh.messaging import open_broker

    url = _settings().effective_broker_url
    try:
        return await open_broker(url)
    except ValueError as exc:
        fail(ConfigError(f"ORDERMESH_BROKER_URL: {exc}", "ORDERMESH_BROKER_URL"))


@outbox_app.command("status")
def outbox_status(as_json: JsonFlag = False) -> None:
    """How far the order events have been published to the broker, and what is parked."""
    from ordermesh.messaging.relay import Parked, ParkingLot
    from ordermesh.services.orders.outbox import RELAY_NAME
    from ordermesh.services.orders.spec import relay_checkpoints

    async def work(system: OrderSystem) -> tuple[int, int, list[Parked]]:
        checkpoints = await relay_checkpoints(system)
        parked = await (await ParkingLot.open(system.db)).all()
        return await checkpoints.load(RELAY_NAME), await system.store.head_position(), parked

    position, head, parked = _run(work)
    if as_json:
        print_json(
            {
                "relay": RELAY_NAME,
                "position": position,
                "head": head,
                "pending": head - position,
                "parked": [
                    {
                        "message_id": p.message.message_id,
                        "routing_key": p.message.routing_key,
                        "reason": p.reason,
                    }
                    for p in parked
                ],
            }
        )
        return
    console.print(
        f"relay {RELAY_NAME}: published up to position {position} of {head} ({head - position} pending)"
    )
    if not parked:
        console.print("parked messages: none")
        return
    table = Table(title=f"parked messages ({len(parked)}): no queue was bound for their routing key")
    table.add_column("message id", overflow="fold", min_width=36)
    for column in ("routing key", "type", "reason"):
        table.add_column(column, overflow="fold")
    for p in parked:
        table.add_row(p.message.message_id, p.message.routing_key, p.message.type, p.reason)
    console.print(table)
    console.print(
        "start the consumer that subscribes to these routing keys, then run `ordermesh outbox replay` "
        "(a running `ordermesh up` also retries them every few seconds)"
    )


@outbox_app.command("replay")
def outbox_replay() -> None:
    """Publish the parked messages again; exit 1 if some still reach no queue."""
    from ordermesh.messaging.relay import ParkingLot
    from ordermesh.services.orders.outbox import EXCHANGE
    from ordermesh.services.orders.spec import relay_for

    async def work(system: OrderSystem) -> tuple[int, int]:
        if not await (await ParkingLot.open(system.db)).all():
            return 0, 0  # nothing to send: no reason to require a reachable broker
        broker = await _open_configured_broker()
        try:
            relay = await relay_for(system, broker)  # the service's own relay, so its rules
            # As the relay does before it publishes: a missing exchange would make every message
            # unroutable, whatever is bound.
            await broker.declare_exchange(EXCHANGE)
            return await relay.replay_parked()
        finally:
            await broker.close()

    replayed, still_parked = _run(work)
    console.print(f"replayed {replayed}, still parked {still_parked}")
    if still_parked:
        console.print(
            "[yellow]no queue is bound yet for the routing keys of the rest:[/yellow] start their consumer, "
            "then replay again (`ordermesh outbox status` lists them)"
        )
        raise typer.Exit(1)


@mail_app.command("list")
def mail_list(
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object per line and mail, with its trace_id, for scripts")
    ] = False,
) -> None:
    """Show the mails the embedded sink caught, with the trace each one belongs to."""
    import json

    from ordermesh import tracing
    from ordermesh.services.notifications.sink import list_mail

    settings = _settings()
    mails = list_mail(settings.data_dir / "mail.jsonl")
    if as_json:
        for m in mails:
            # print, not the rich console: no markup, highlighting or wrapping in machine output.
            print(json.dumps({**m.to_json(), "trace_id": tracing.trace_id(m.traceparent)}))
        return
    table = Table(title=f"mail ({len(mails)})")
    for column in ("received", "to", "subject", "message id", "trace"):
        table.add_column(column, overflow="fold")
    for m in mails:
        trace = tracing.trace_id(m.traceparent) or "-"
        table.add_row(m.received_at, ", ".join(m.rcpt_tos), m.subject, m.message_id, trace)
    console.print(table)


saga_app = typer.Typer(help="Order sagas: where each order's fulfilment is.", no_args_is_help=True)
app.add_typer(saga_app, name="saga")


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


@saga_app.command("show")
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


@saga_app.command("list")
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


@app.command()
def info(as_json: JsonFlag = False) -> None:
    """Where everything is: each service's database and ports, the broker, the mail server."""
    from ordermesh import catalog
    from ordermesh.config import SERVICES

    settings = as_running(_settings())
    services: list[dict[str, Any]] = []
    for name in SERVICES:
        spec = catalog.spec(name)
        ports: dict[str, int] = {"http": getattr(settings, spec.http_port)}
        if spec.grpc_port:
            ports["grpc"] = getattr(settings, spec.grpc_port)
        database = redact_urls(settings.service_database_url(name))
        services.append({"service": name, "database": database, "ports": ports})
    data: dict[str, Any] = {
        "data_dir": str(settings.data_dir.resolve()),
        "broker": redact_urls(settings.effective_broker_url),
        "smtp": redact_urls(settings.effective_smtp_url),
        "host": settings.http_host,
        "services": services,
    }
    if as_json:
        print_json(data)
        return
    for key in ("data_dir", "broker", "smtp", "host"):
        console.print(f"{key:<10} {data[key]}", highlight=False)
    table = Table(title="services")
    for column in ("service", "database", "ports"):
        table.add_column(column)
    for svc in services:
        shown = "  ".join(f"{k} {v}" for k, v in svc["ports"].items())
        table.add_row(svc["service"], svc["database"], shown)
    console.print(table)


@app.command()
def demo(
    orders: Annotated[int, typer.Option(min=1, max=10_000, help="how many orders to place")] = 30,
    url: Annotated[
        str | None, typer.Option(help="the order service's REST URL (default: ORDERMESH_HTTP_PORT's)")
    ] = None,
    timeout: Annotated[float, typer.Option(min=1, help="seconds to wait for every order to end")] = 90.0,
) -> None:
    """Place a mix of orders (shipping, declined, out of stock) on the running system, follow them
    live, then summarize each outcome; exit 1 unless every order ended with a reason."""
    from ordermesh.demo import run_demo

    raise typer.Exit(run(run_demo(as_running(_settings()), orders, url, timeout, console)))


@app.command()
def openapi() -> None:
    """Print the REST API's OpenAPI document (committed as docs/openapi.json)."""
    from ordermesh.services.orders.openapi import openapi_json

    print(openapi_json(), end="")


def main() -> None:
    import logging

    from ordermesh import logs
    from ordermesh.config import private_files
    from ordermesh.tuning import tune_gc

    tune_gc()  # every ordermesh process: the server, the notification service, rebuilds
    private_files()
    logs.configure(logs.format_from(), level=logging.WARNING)  # `up` and `run` then log INFO
    app()
