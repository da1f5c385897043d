"""The ``ordermesh`` command: run the system, mint dev tokens, and every operator command, each
group from the package it operates (``services.*.cli``, ``kit.*_cli``, ``dlq_cli``).

Order, projection, saga, outbox, payment, stock and shipment commands work directly on the
service's own database, like an operator's console: no server needs to be running.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import typer
from rich.table import Table

from ordermesh import catalog, dlq_cli
from ordermesh.auth import Tokens
from ordermesh.config import ServiceName, redact_urls
from ordermesh.errors import OrdermeshError, ValidationError
from ordermesh.kit import breakers_cli, faults_cli
from ordermesh.kit.console import JsonFlag, console, fail, print_json, run
from ordermesh.kit.console import settings as _settings
from ordermesh.kit.running import as_running
from ordermesh.services.inventory import cli as inventory_cli
from ordermesh.services.notifications import cli as mail_cli
from ordermesh.services.orders import cli as orders_cli
from ordermesh.services.orders import outbox_cli, saga_cli
from ordermesh.services.payments import cli as payments_cli
from ordermesh.services.shipping import cli as shipping_cli

app = typer.Typer(
    help="ordermesh: order processing over REST, gRPC, messages, events and sagas.", no_args_is_help=True
)
app.add_typer(orders_cli.order_app, name="order")
app.add_typer(orders_cli.projections_app, name="projections")
app.add_typer(saga_cli.app, name="saga")
app.add_typer(outbox_cli.app, name="outbox")
app.add_typer(dlq_cli.app, name="dlq")
app.add_typer(mail_cli.app, name="mail")
# Each service's operator commands live with the service, on its own database.
app.add_typer(payments_cli.app, name="payments")
app.add_typer(inventory_cli.app, name="stock")
app.add_typer(shipping_cli.app, name="shipments")
app.add_typer(faults_cli.app, name="faults")


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


@app.command()
def info(as_json: JsonFlag = False) -> None:
    """Where everything is: each service's database and ports, the broker, the mail server."""
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


# After the commands above, so `ordermesh --help` lists them where they always stood.
app.command("events")(orders_cli.events)
app.command("breakers")(breakers_cli.breakers)


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
