"""The one composition root every service is built from.

``started(spec, settings)`` does, in this order, for any service:

1. bind its HTTP port and check its gRPC port, if it has one (a taken port fails here, before
   anything is opened: ``ConfigError`` naming the variable);
2. serve ``/livez``, ``/readyz`` (503 "starting" until step 4 is done) and ``/metrics``;
3. run the spec's ``build(rt)``: the service opens what it needs through the runtime
   (``rt.database()``, ``rt.broker()``, ``rt.outbox()``), adds routes to ``rt.app``, gRPC
   servicers (``rt.grpc``), background loops (``rt.background``) and readiness checks. Everything is
   entered on one ``AsyncExitStack``, so a failure half-way closes what was opened;
4. bind the gRPC port and start the gRPC server with the servicers ``build`` registered, and the
   background loops; ``/readyz`` answers 200 once every check passes;
5. on ``stop``: ``/readyz`` says "stopping", drains run (streams end, consumers stop taking
   messages), gRPC refuses new calls and gives running ones a grace period, HTTP stops taking
   connections (requests in flight finish), background loops stop, then the stack closes what the
   service opened, last opened first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from ordermesh.auth import Tokens
from ordermesh.clock import Clock, SystemClock
from ordermesh.config import Settings, client_host, redact_urls
from ordermesh.db import SqlDb, connect
from ordermesh.errors import InfrastructureError
from ordermesh.http.app import create_app
from ordermesh.http.middleware import HttpLimits
from ordermesh.kit import downstreams, telemetry
from ordermesh.kit.admin import install_faults
from ordermesh.kit.listeners import HttpListener, add_grpc_port, bind
from ordermesh.messaging import Broker, open_broker
from ordermesh.messaging.faults import with_faults
from ordermesh.messaging.outbox import OutboxPublisher, SqlOutbox
from ordermesh.resilience import Guard, Guards
from ordermesh.resilience.faults import Faults
from ordermesh.rpc.server import build_server, stop_server

log = logging.getLogger("ordermesh.kit")

Check = Callable[[], Awaitable[None]]
Loop = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
Register = Callable[[grpc.aio.Server], None]


@dataclass(frozen=True)
class ServiceSpec:
    """What makes a service: its name, how to build it, and which settings name its ports."""

    name: str  # its settings: <name>_database_url, and the ports named below
    title: str
    build: Callable[[Runtime], Awaitable[None]]
    http_port: str  # the Settings field of its HTTP port (REST and/or /livez, /readyz, /metrics)
    grpc_port: str | None = None  # the Settings field of its gRPC port, for gRPC services
    security_schemes: dict[str, Any] | None = None  # documented in its OpenAPI
    queues: tuple[str, ...] = ()  # the queues it may consume: where its dead letters are (``ordermesh dlq``)


@dataclass
class Runtime:
    """What ``build`` wires a service with. Owned by ``started``; see the module doc."""

    spec: ServiceSpec
    settings: Settings
    clock: Clock
    tokens: Tokens
    app: FastAPI
    stack: contextlib.AsyncExitStack
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    started: bool = False
    _db: SqlDb | None = None
    _broker: Broker | None = None
    _outbox: SqlOutbox | None = None
    _checks: list[tuple[Check, str | None]] = field(default_factory=list)
    _drains: list[Callable[[], Awaitable[None] | None]] = field(default_factory=list)
    _loops: list[tuple[str, Loop]] = field(default_factory=list)
    _grpc: list[tuple[Register, str]] = field(default_factory=list)
    http_url: str = ""
    grpc_target: str = ""
    _guards: Guards | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def metrics(self) -> CollectorRegistry:
        registry: CollectorRegistry = self.app.state.metrics.registry
        return registry

    @property
    def database_url(self) -> str:
        return self.settings.service_database_url(self.name)

    async def database(self) -> SqlDb:
        """The service's own database, opened once, closed at exit, pinged by ``/readyz``."""
        if self._db is None:
            db = await connect(self.database_url)
            self.stack.push_async_callback(db.close)
            self._db = db
            self.ready_check(db.ping, "database")
        return self._db

    async def broker(self) -> Broker:
        """The configured broker, opened once, closed at exit; ``/readyz`` fails while it is down."""
        if self._broker is None:
            broker = with_faults(await open_broker(self.settings.effective_broker_url), self.app.state.faults)
            self.stack.push_async_callback(broker.close)
            self._broker = broker

            async def connected() -> None:
                if not broker.connected:
                    raise InfrastructureError("the broker connection is down (reconnecting)")

            self.ready_check(connected, "broker")
        return self._broker

    def guard(self, downstream: str) -> Guard:
        """The guard (deadline, retries, breaker, bulkhead) of this process's calls to
        ``downstream``: one per downstream, its policy from settings; pass it to the client. The
        first one adds the breakers to ``/metrics`` and ``GET /admin/breakers``."""
        if self._guards is None:
            self._guards = downstreams.guards_for(self.settings, self.clock)
            downstreams.install(self.app, self.metrics, self.tokens, self._guards)
        return self._guards.get(downstream)

    async def outbox(self, *exchanges: str) -> SqlOutbox:
        """An outbox table in the service's database, published to the broker in the background.
        ``exchanges`` (those the service publishes to) are declared first: the publisher's first
        try would otherwise find none and park every message as unroutable."""
        broker = await self.broker()
        for exchange in exchanges:
            await broker.declare_exchange(exchange)
        if self._outbox is None:
            outbox = await SqlOutbox.open(await self.database())
            publisher = OutboxPublisher(outbox, broker)
            self.background("outbox-publisher", publisher.run)
            self._outbox = outbox
        return self._outbox

    def grpc(self, register: Register, service_name: str) -> None:
        if self.spec.grpc_port is None:
            raise RuntimeError(f"{self.name}: its ServiceSpec names no grpc_port")
        self._grpc.append((register, service_name))

    def background(self, name: str, run: Loop) -> None:
        """``run(stop)`` runs from start-up until shutdown sets ``stop``; it is awaited then."""
        self._loops.append((name, run))

    def ready_check(self, check: Check, dependency: str | None = None) -> None:
        """``check()`` raises ``InfrastructureError`` while the service is not ready. With a
        ``dependency`` named, ``/readyz`` (which anyone may call) says only that it is unavailable;
        the error itself, which may hold an address, goes to the log. Without, its message is
        ``/readyz``'s answer."""
        self._checks.append((check, dependency))

    def on_drain(self, drain: Callable[[], Awaitable[None] | None]) -> None:
        """Called first at shutdown, while the listeners still answer (end streams, stop consuming)."""
        self._drains.append(drain)

    async def ready(self) -> None:
        if self.stopping.is_set():
            raise InfrastructureError(f"{self.name}: stopping")
        if not self.started:
            raise InfrastructureError(f"{self.name}: starting")
        for check, dependency in self._checks:
            try:
                await check()
            except InfrastructureError as exc:
                if dependency is None:
                    raise
                log.warning("%s: not ready: %s", self.name, redact_urls(str(exc)))
                raise InfrastructureError(f"{self.name}: {dependency} unavailable") from exc


@contextlib.asynccontextmanager
async def started(
    spec: ServiceSpec, settings: Settings, clock: Clock | None = None
) -> AsyncIterator[Runtime]:
    """The service, built and serving, until the block ends (then drained and closed)."""
    settings.check_exposure()
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(telemetry.installed(spec.name))  # before the edges are built
        rt = _runtime(spec, settings, clock, stack)
        host = settings.http_host
        grpc_port = getattr(settings, spec.grpc_port) if spec.grpc_port is not None else None
        if spec.grpc_port is not None and grpc_port:
            # grpc.aio frees a bound port only when its server is collected, not when a server
            # that never started is stopped: check the port now, bind it once the service is built.
            bind(host, grpc_port, spec.grpc_port).close()
        http = HttpListener(rt.app, bind(host, getattr(settings, spec.http_port), spec.http_port), spec.name)
        await http.start()
        rt.http_url = f"http://{client_host(host)}:{http.port}"
        stack.push_async_callback(http.stop)  # last out: /readyz answers "stopping" while draining
        await spec.build(rt)
        server: grpc.aio.Server | None = None
        if spec.grpc_port is not None and grpc_port is not None:
            server = build_server(
                registrations=[register for register, _ in rt._grpc],
                service_names=[name for _, name in rt._grpc],
                tokens=rt.tokens,
                metrics=rt.metrics,
                faults=rt.app.state.faults,
            )
            port = add_grpc_port(server, host, grpc_port, spec.grpc_port)
            rt.grpc_target = f"{client_host(host)}:{port}"
            await server.start()
        stop_loops = asyncio.Event()
        loops = [asyncio.create_task(run(stop_loops), name=f"{spec.name}:{name}") for name, run in rt._loops]
        rt.started = True
        log.info("%s: serving on %s%s", spec.name, rt.http_url, f" and grpc {rt.grpc_target}" * bool(server))
        try:
            yield rt
        finally:
            rt.stopping.set()
            for drain in rt._drains:
                outcome = drain()
                if outcome is not None:
                    await outcome
            if server is not None:
                await stop_server(server, grace=2.0)
            stop_loops.set()
            for task in loops:
                with contextlib.suppress(Exception):
                    await task
            log.info("%s: stopped", spec.name)


def _runtime(
    spec: ServiceSpec, settings: Settings, clock: Clock | None, stack: contextlib.AsyncExitStack
) -> Runtime:
    clock = clock or SystemClock()
    holder: list[Runtime] = []

    async def ready(_app: FastAPI) -> None:
        await holder[0].ready()

    # Every service's HTTP edge: body and header caps, slow clients cut (ORDERMESH_MAX_BODY_BYTES…).
    limits = HttpLimits.from_settings(settings)
    app = create_app(spec.title, ready, security_schemes=spec.security_schemes, limits=limits)
    rt = Runtime(spec, settings, clock, Tokens(settings, clock), app, stack)
    # Injected faults (`ordermesh faults`), in this process's memory: on every call into the
    # service (HTTP here, gRPC in started) and every delivery it consumes (broker()).
    faults = Faults(spec.name, allowed=settings.faults_allowed)
    app.state.faults = faults
    install_faults(app, faults, rt.tokens, rt.metrics)
    holder.append(rt)
    return rt


__all__ = ["Runtime", "ServiceSpec", "started"]
