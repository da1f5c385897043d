"""The operator console every service's CLI commands share: tables that are never cut when piped,
``--json`` for scripts, errors as one line, and work on a service's own database.

    @app.command("show")
    def show(order_id: str, as_json: JsonFlag = False) -> None:
        payment = on_database("payments", lambda db: PaymentStore(db).get(order_id))
        print_json(payment) if as_json else console.print(table(payment))
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import orjson
import typer
from rich.console import Console
from rich.markup import escape

from ordermesh.config import Settings, load, redact_urls
from ordermesh.db import SqlDb, connect
from ordermesh.errors import ConfigError, OrdermeshError, ValidationError

if TYPE_CHECKING:
    from ordermesh.messaging.port import Broker

T = TypeVar("T")

# Piped (scripts, CI logs), rich would fold tables to 80 columns and cut ids in half: as wide as
# the content instead.
console = Console(width=None if sys.stdout.isatty() else 10_000)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 10_000)
JsonFlag = Annotated[bool, typer.Option("--json", help="print JSON (for scripts) instead of a table")]


def print_json(data: Any) -> None:
    """Machine output: plain JSON on stdout, no markup, highlighting or wrapping."""
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode())


def fail(exc: OrdermeshError) -> NoReturn:
    """One line on stderr; exit 2 for bad input (a malformed setting or argument: a usage
    error, as typer says it), else 1."""
    # Escaped: an error's text may hold brackets rich would take for markup.
    errors.print(f"[red]error:[/red] {escape(redact_urls(str(exc)))}", soft_wrap=True, highlight=False)
    raise typer.Exit(2 if isinstance(exc, ConfigError | ValidationError) else 1) from exc


def settings() -> Settings:
    """The settings of the environment; a bad value is one line and exit 2 (a usage error)."""
    try:
        return load()
    except ConfigError as exc:
        fail(exc)


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``; an ``OrdermeshError`` (a database or broker that is down, whose
    message says how to start it) is :func:`fail`, not a traceback."""
    try:
        return asyncio.run(main)
    except OrdermeshError as exc:
        fail(exc)


def on_database(service: str, work: Callable[[SqlDb], Awaitable[T]]) -> T:
    """Open ``service``'s own database (as its process would), run ``work``, close."""

    async def main() -> T:
        db = await connect(load().service_database_url(service))
        try:
            return await work(db)
        finally:
            await db.close()

    return run(main())


async def open_configured_broker() -> Broker:
    """The broker of ``ORDERMESH_BROKER_URL``; a malformed URL is a usage error, not a traceback."""
    from ordermesh.messaging import open_broker  # here: most commands never open a broker

    url = settings().effective_broker_url
    try:
        return await open_broker(url)
    except ValueError as exc:
        fail(ConfigError(f"ORDERMESH_BROKER_URL: {exc}", "ORDERMESH_BROKER_URL"))


__all__ = [
    "JsonFlag",
    "console",
    "errors",
    "fail",
    "on_database",
    "open_configured_broker",
    "print_json",
    "run",
    "settings",
]
