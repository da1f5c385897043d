"""``ordermesh up``: the whole system in the foreground with embedded defaults.

Five services, each its own process built by the kit (``ordermesh run NAME``), under the kit's
supervisor (``kit/supervisor.py``): orders (REST + gRPC), payments (gRPC), inventory (gRPC),
shipping (REST) and notifications. The embedded broker (a SQLite file) connects them and an
embedded mail sink catches the mail unless ORDERMESH_SMTP_URL says where to send it. Ctrl-C or
SIGTERM: each service drains and exits, then the sink stops.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from ordermesh import catalog, logs, tuning
from ordermesh.auth import Tokens
from ordermesh.config import SERVICES, Settings, private_files, redact_urls
from ordermesh.errors import OrdermeshError
from ordermesh.kit.running import recorded
from ordermesh.kit.supervisor import Child, check_ports, supervise
from ordermesh.services.notifications.sink import start_mail_sink


async def serve_all(settings: Settings, console: Console) -> None:
    specs = [catalog.spec(name) for name in SERVICES]
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_files(settings.data_dir)
    sink = None
    if not settings.smtp_url:
        sink = await start_mail_sink("127.0.0.1", settings.mail_sink_port, settings.data_dir / "mail.jsonl")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    console.print(f"starting {', '.join(SERVICES)} …")
    try:
        with recorded(settings):
            await supervise(settings, specs, stop, lambda children: _banner(settings, children, console))
    finally:
        if sink is not None:
            await sink.stop()
        console.print("ordermesh stopped")


def _banner(settings: Settings, children: Sequence[Child], console: Console) -> None:
    console.print("[bold]── ordermesh ──[/bold]")
    table = Table(show_edge=False, pad_edge=False)
    for column in ("service", "state", "listens on", "health"):
        table.add_column(column, no_wrap=True)
    for child in children:
        style = "green" if child.state == "ready" else "red"
        table.add_row(child.name, f"[{style}]{child.state}[/{style}]", child.addresses, child.health_url)
    console.print(table, soft_wrap=True)
    console.print(
        f"broker        {redact_urls(settings.effective_broker_url)}   (`ordermesh dlq list`)", soft_wrap=True
    )
    mail = "embedded sink (`ordermesh mail list`)" if not settings.smtp_url else "external"
    console.print(f"mail          {redact_urls(settings.effective_smtp_url)}   {mail}")
    console.print(f"data          {settings.data_dir.resolve()}   (`ordermesh info`)", soft_wrap=True)
    if settings.uses_dev_secret:
        console.print(
            "[yellow]JWT secret    the development default: set ORDERMESH_JWT_SECRET in production[/yellow]"
        )
    host = children[0].addresses.split()[0] if children else ""
    console.print("dev token     for user 'dev-user' (more: `ordermesh token USER_ID`):")
    console.print(f"export ORDERMESH_TOKEN={Tokens(settings).issue('dev-user')}", soft_wrap=True)
    console.print(
        f'try           curl -H "Authorization: Bearer $ORDERMESH_TOKEN" {host}/api/users/dev-user/orders',
        soft_wrap=True,
    )
    console.print("Ctrl-C stops.")


def run_system(
    settings: Settings, host: str | None, http_port: int | None, grpc_port: int | None, console: Console
) -> int:
    """The exit code: 1 with one line when the system cannot start (a port in use, …)."""
    overrides: dict[str, Any] = {}
    if host:
        overrides["http_host"] = host
    if http_port:
        overrides["http_port"] = http_port
    if grpc_port:
        overrides["grpc_port"] = grpc_port
    settings = settings.model_copy(update=overrides)
    level, loggers = settings.log_levels
    logs.configure(
        settings.log_format, level=level, service="supervisor", loggers=loggers
    )  # the children set up their own
    try:
        settings.check_exposure()
        check_ports(settings, [catalog.spec(name) for name in SERVICES])
        tuning.serve(serve_all(settings, console))
    except OrdermeshError as exc:
        console.print(f"[red]error:[/red] {redact_urls(str(exc))}", soft_wrap=True)
        return 1
    return 0
