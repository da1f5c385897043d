"""``ordermesh faults``: inject faults into the running services, show them, clear them.

The commands call each service's admin routes (``kit.admin``) on its HTTP port (``Settings``'
``*_http_port`` on ``client_host(http_host)``, or where the running ``up`` says it serves them:
``kit.running``) with a service token for ``cli`` minted from the
settings' secret, so the CLI and the services must share ``ORDERMESH_JWT_SECRET``. Faults live in
each service's memory: a restart clears them.

    ordermesh faults set payments --error-rate 0.5 --delay 200
    ordermesh faults set notifications --queue notifications.order_created --duplicate 0.2
    ordermesh faults show [--json]
    ordermesh faults clear [SERVICE]

``set`` replaces what it names: the link (any link option given) and/or the one queue of
``--queue``; the service's other faults stay. A service that refuses (``ORDERMESH_FAULTS``) or a
malformed value is one line and exit 2; a service that is not running, exit 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Annotated, Any, TypeVar

import aiohttp
import orjson
import typer
from rich.table import Table

from ordermesh.auth import Tokens
from ordermesh.config import SERVICES, Settings, client_host, load
from ordermesh.errors import (
    ConfigError,
    InfrastructureError,
    OrdermeshError,
    Unauthenticated,
    ValidationError,
)
from ordermesh.kit.admin import PATH
from ordermesh.kit.console import JsonFlag, console, fail, print_json, run
from ordermesh.kit.running import as_running
from ordermesh.problems import error_from_problem
from ordermesh.resilience.faults import FaultPlan, LinkFaults, QueueFaults

app = typer.Typer(
    help="Inject faults into the running services (on in the embedded mode; elsewhere only with "
    "ORDERMESH_FAULTS=enabled). Faults live in each service's memory: a restart clears them.",
    no_args_is_help=True,
)
TIMEOUT = 5.0
T = TypeVar("T")
_SERVICE_HELP = f"one of {', '.join(SERVICES)}"


def service_url(settings: Settings, service: str, path: str = PATH) -> str:
    """Where ``service``'s admin route ``path`` answers."""
    port = getattr(settings, "http_port" if service == "orders" else f"{service}_http_port")
    return f"http://{client_host(settings.http_host)}:{port}{path}"


class Admin:
    """The admin routes of every service, called with one service token."""

    def __init__(self, settings: Settings, http: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.http = http
        self.auth = {"Authorization": f"Bearer {Tokens(settings).issue_service('cli')}"}

    async def call(
        self, service: str, method: str, plan: FaultPlan | None = None, path: str = PATH
    ) -> dict[str, Any]:
        url = service_url(self.settings, service, path)
        body = None if plan is None else orjson.dumps(plan.to_dict())
        headers = self.auth if body is None else {**self.auth, "Content-Type": "application/json"}
        try:
            async with self.http.request(method, url, data=body, headers=headers) as answer:
                raw = await answer.read()
                status = answer.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise InfrastructureError(
                f"{service} is not reachable at {url} ({type(exc).__name__}): is it running (`ordermesh up`)?"
            ) from exc
        if status == 200:
            snapshot: dict[str, Any] = orjson.loads(raw)
            return snapshot
        error = error_from_problem(status, raw)
        if status == 403:  # the service's ORDERMESH_FAULTS refuses: a setting, as a usage error
            raise ConfigError(str(error), "ORDERMESH_FAULTS")
        if status == 401:
            raise Unauthenticated(
                f"{service} refused the CLI's token ({error}): share ORDERMESH_JWT_SECRET with it"
            )
        raise error


def admin_settings() -> Settings:
    """The environment's settings, at the addresses of the ``up`` running on its data dir."""
    try:
        return as_running(load())
    except ConfigError as exc:
        fail(exc)


def _service(name: str) -> str:
    if name not in SERVICES:
        fail(ValidationError(f"unknown service {name!r}: expected {_SERVICE_HELP}"))
    return name


async def with_admin(settings: Settings, work: Callable[[Admin], Awaitable[T]]) -> T:
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        return await work(Admin(settings, http))


@app.command("set")
def set_faults(
    service: Annotated[str, typer.Argument(help=_SERVICE_HELP, show_default=False)],
    error_rate: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="share of calls answered 503 / UNAVAILABLE")
    ] = None,
    delay: Annotated[float | None, typer.Option(min=0.0, help="milliseconds added to every call")] = None,
    hang: Annotated[bool, typer.Option("--hang", help="hold every call until its deadline")] = False,
    reset: Annotated[bool, typer.Option("--reset", help="drop every call's connection")] = False,
    blackhole: Annotated[bool, typer.Option("--blackhole", help="never answer any call")] = False,
    queue: Annotated[
        str | None, typer.Option(help="a queue the service consumes, for the options below")
    ] = None,
    duplicate: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="share of deliveries handled twice")
    ] = None,
    bus_delay: Annotated[float | None, typer.Option(min=0.0, help="milliseconds before the handler")] = None,
    drop: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="share of deliveries dropped before the ack")
    ] = None,
    poison: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="share of deliveries with a spoilt body")
    ] = None,
) -> None:
    """Set the faults of calls into SERVICE (link options), and/or of one queue it consumes.

    Rates are shares from 0 to 1. --hang, --reset and --blackhole meet every call: one at most.
    """
    name = _service(service)
    link_given = error_rate is not None or delay is not None or hang or reset or blackhole
    queue_given = any(v is not None for v in (duplicate, bus_delay, drop, poison))
    if queue_given and not queue:
        fail(ValidationError("--duplicate, --bus-delay, --drop and --poison need --queue QUEUE"))
    if not link_given and not queue_given:
        fail(ValidationError("nothing to set: give a link option or --queue QUEUE with a queue option"))
    try:
        link = LinkFaults(error_rate or 0.0, delay or 0.0, hang, reset, blackhole)
        queue_plan = QueueFaults(
            duplicate or 0.0, bus_delay or 0.0, drop or 0.0, poison or 0.0, queue=queue or ""
        )
    except ValidationError as exc:
        fail(exc)
    settings = admin_settings()

    async def work(admin: Admin) -> dict[str, Any]:
        current = FaultPlan.from_dict(_plan_of(await admin.call(name, "GET")))
        queues = dict(current.queues)
        if queue:
            queues.pop(queue, None)
            if queue_plan.active:
                queues[queue] = queue_plan
        plan = replace(current, link=link if link_given else current.link, queues=queues)
        return await admin.call(name, "PUT", plan)

    snapshot = run(with_admin(settings, work))
    console.print(f"{name}: faults now {_describe(snapshot)}", highlight=False)


@app.command("show")
def show_faults(as_json: JsonFlag = False) -> None:
    """Show every service's faults (a service that is not running shows as unreachable)."""
    settings = admin_settings()

    async def one(admin: Admin, name: str) -> dict[str, Any]:
        try:
            return {**(await admin.call(name, "GET")), "reachable": True}
        except OrdermeshError as exc:
            return {"service": name, "reachable": False, "error": str(exc)}

    async def work(admin: Admin) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(one(admin, name) for name in SERVICES)))

    rows: list[dict[str, Any]] = run(with_admin(settings, work))
    if as_json:
        print_json(rows)
        return
    table = Table(title="faults")
    for column in ("service", "faults", "injection"):
        table.add_column(column, overflow="fold")
    for row in rows:
        if not row["reachable"]:
            table.add_row(row["service"], "-", "unreachable (not running?)")
            continue
        allowed = "allowed" if row["allowed"] else "off (ORDERMESH_FAULTS)"
        table.add_row(row["service"], _describe(row), allowed)
    console.print(table)


@app.command("clear")
def clear_faults(
    service: Annotated[str | None, typer.Argument(help=f"{_SERVICE_HELP} (default: all)")] = None,
) -> None:
    """Clear the faults of SERVICE, or of every running service."""
    names = [_service(service)] if service else list(SERVICES)
    settings = admin_settings()

    async def work(admin: Admin) -> list[tuple[str, str | None]]:
        async def one(name: str) -> tuple[str, str | None]:
            try:
                await admin.call(name, "DELETE")
            except InfrastructureError as exc:
                if service:
                    raise
                return name, str(exc)
            return name, None

        return list(await asyncio.gather(*(one(name) for name in names)))

    for name, unreachable in run(with_admin(settings, work)):
        console.print(f"{name}: " + ("not running, nothing to clear" if unreachable else "faults cleared"))


def _plan_of(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {"link": snapshot.get("link"), "queues": snapshot.get("queues") or {}}


def _describe(snapshot: dict[str, Any]) -> str:
    """What a snapshot faults, for people: ``error 50%, delay 200 ms; q: drop 10%`` or ``none``."""
    plan = FaultPlan.from_dict(_plan_of(snapshot))
    parts = []
    if plan.link.active:
        link = plan.link
        shown = [name for name in ("hang", "reset", "blackhole") if getattr(link, name)]
        shown += [f"error {link.error_rate:.0%}"] * bool(link.error_rate)
        shown += [f"delay {link.delay_ms:g} ms"] * bool(link.delay_ms)
        parts.append(", ".join(shown))
    for queue, q in plan.queues.items():
        shown = [
            f"{name} {getattr(q, name):.0%}" for name in ("duplicate", "drop", "poison") if getattr(q, name)
        ]
        shown += [f"delay {q.delay_ms:g} ms"] * bool(q.delay_ms)
        parts.append(f"{queue}: {', '.join(shown)}")
    return "; ".join(parts) or "none"


__all__ = ["Admin", "admin_settings", "app", "service_url", "with_admin"]
