"""``ordermesh up``: the whole system in the foreground with embedded defaults.

The order service (REST and gRPC on one event loop and one ``OrderSystem``, plus its outbox
relay to the broker) runs in this process; the notification service runs as its own process
(``ordermesh run notifications``), as it would in production; the embedded broker (a SQLite
file) connects them, and an embedded mail sink catches the mail unless ORDERMESH_SMTP_URL says
where to send it. Ctrl-C or SIGTERM: REST stops taking requests, open gRPC streams end with
UNAVAILABLE (clients resume from their last position), the relay and the notification service
stop, the read models stop, the database closes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import uvicorn
from rich.console import Console

from ordermesh import tracing, tuning
from ordermesh.config import Settings
from ordermesh.eventstore.subscription import CheckpointStore, MemoryCheckpoints, SqlCheckpoints
from ordermesh.http.auth import Tokens
from ordermesh.http.server import OwnedSignals
from ordermesh.messaging import metrics as relay_metrics
from ordermesh.messaging import open_broker
from ordermesh.messaging.relay import OutboxRelay, ParkingLot
from ordermesh.rpc.server import build_server, stop_server
from ordermesh.services.notifications.sink import start_mail_sink
from ordermesh.services.orders.app import create_order_app
from ordermesh.services.orders.grpc_api import SERVICE_NAME, OrderGrpcService
from ordermesh.services.orders.outbox import EXCHANGE, RELAY_NAME, OrderMessages
from ordermesh.services.orders.runtime import build_order_system


async def serve_all(settings: Settings, host: str, http_port: int, grpc_port: int, console: Console) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    system = await build_order_system(settings.effective_database_url, snapshot_every=settings.snapshot_every)
    await system.start()
    app = create_order_app(settings, system)
    tokens: Tokens = app.state.tokens
    orders_rpc = OrderGrpcService(system)
    grpc_server = build_server(
        registrations=[orders_rpc.register],
        service_names=[SERVICE_NAME],
        tokens=tokens,
        metrics=app.state.metrics.registry,
    )
    grpc_server.add_insecure_port(f"{host}:{grpc_port}")
    await grpc_server.start()

    sink = None
    if not settings.smtp_url:
        sink = await start_mail_sink("127.0.0.1", settings.mail_sink_port, settings.data_dir / "mail.jsonl")
    notifications = await _start_notifications(settings)
    broker = await open_broker(settings.effective_broker_url)
    checkpoints: CheckpointStore = await SqlCheckpoints.open(system.db) if system.db else MemoryCheckpoints()
    relay = OutboxRelay(
        system.store,
        checkpoints,
        broker,
        EXCHANGE,
        OrderMessages(system.service),
        name=RELAY_NAME,
        parking=await ParkingLot.open(system.db),
    )
    relay_metrics.register(app.state.metrics.registry, lambda: [relay])
    stop_relay = asyncio.Event()
    relay_task = asyncio.create_task(relay.run(stop_relay), name="outbox-relay")
    http = OwnedSignals(uvicorn.Config(app, host=host, port=http_port, log_level="info", access_log=False))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(http, "should_exit", True))
    _banner(settings, host, http_port, grpc_port, tokens.issue("dev-user"), console)
    try:
        await http.serve()
    finally:
        orders_rpc.shutdown()
        await stop_server(grpc_server, grace=2.0)
        stop_relay.set()
        await relay_task
        await broker.close()
        await _stop_process(notifications)
        if sink is not None:
            await sink.stop()
        await system.close()
        console.print("ordermesh stopped")


async def _start_notifications(settings: Settings) -> asyncio.subprocess.Process:
    """`ordermesh run notifications` as a child process on the same broker and mail server."""
    env = {
        **os.environ,
        "ORDERMESH_DATA_DIR": str(settings.data_dir),
        "ORDERMESH_BROKER_URL": settings.effective_broker_url,
        "ORDERMESH_SMTP_URL": settings.effective_smtp_url,
        "ORDERMESH_NOTIFICATIONS_HTTP_PORT": str(settings.notifications_http_port),
        "ORDERMESH_HTTP_HOST": settings.http_host,
        "ORDERMESH_PARENT_PID": str(os.getpid()),
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ordermesh", "run", "notifications", env=env, start_new_session=True
    )


async def _stop_process(process: asyncio.subprocess.Process, grace: float = 10.0) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            process.kill()
            await process.wait()


def _banner(
    settings: Settings, host: str, http_port: int, grpc_port: int, token: str, console: Console
) -> None:
    console.rule("[bold]ordermesh")
    console.print(f"database      {settings.effective_database_url}")
    console.print(f"REST API      http://{host}:{http_port}/api   (docs: http://{host}:{http_port}/docs)")
    console.print(f"gRPC          {host}:{grpc_port}   ({SERVICE_NAME}; health and reflection on)")
    console.print(
        f"health        http://{host}:{http_port}/readyz   metrics: http://{host}:{http_port}/metrics"
    )
    console.print(
        f"broker        {settings.effective_broker_url}   (exchange `orders`; `ordermesh dlq list`)"
    )
    mail = "embedded sink (`ordermesh mail list`)" if not settings.smtp_url else "external"
    console.print(f"mail          {settings.effective_smtp_url}   {mail}")
    if settings.uses_dev_secret:
        console.print(
            "[yellow]JWT secret    the development default: set ORDERMESH_JWT_SECRET in production[/yellow]"
        )
    console.print("dev token     for user 'dev-user' (more: `ordermesh token USER_ID`):")
    console.print(f"export ORDERMESH_TOKEN={token}", soft_wrap=True)
    console.print(
        f'try           curl -H "Authorization: Bearer $ORDERMESH_TOKEN" '
        f"http://{host}:{http_port}/api/users/dev-user/orders",
        soft_wrap=True,
    )
    console.print("Ctrl-C stops.")


def run_system(
    settings: Settings, host: str | None, http_port: int | None, grpc_port: int | None, console: Console
) -> None:
    tracing.configure_logging()  # the relay's and the services' lines, with the trace id
    main = serve_all(
        settings,
        host or settings.http_host,
        http_port or settings.http_port,
        grpc_port or settings.grpc_port,
        console,
    )
    tuning.serve(main)
