"""``ordermesh up``: every service as its own process (``ordermesh run NAME``), supervised.

Before anything starts, every port is checked, so a busy one is one line naming its variable and
nothing is left running. The embedded mail sink runs in this process (unless ORDERMESH_SMTP_URL
names a mail server); the children share the embedded broker and the data dir. A child that
exits is logged and restarted with backoff (1 s doubling to 30 s; reset after a minute up),
so the system never runs half-up in silence. Ctrl-C or SIGTERM: every child gets SIGTERM,
drains and exits; one that does not within 10 s is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ordermesh.config import ENV_PREFIX, Settings, client_host
from ordermesh.kit.listeners import bind
from ordermesh.kit.process import PARENT_PID
from ordermesh.kit.runtime import ServiceSpec
from ordermesh.kit.spawn import Spawned, spawn

log = logging.getLogger("ordermesh.up")

BACKOFF_START, BACKOFF_MAX, STEADY_AFTER = 1.0, 30.0, 60.0


@dataclass
class Child:
    spec: ServiceSpec
    settings: Settings
    process: Spawned | None = None
    restarts: int = 0
    state: str = "starting"
    exited: list[int] = field(default_factory=list)  # exit codes, newest last

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def health_url(self) -> str:
        port = getattr(self.settings, self.spec.http_port)
        return f"http://{client_host(self.settings.http_host)}:{port}/readyz"

    @property
    def addresses(self) -> str:
        host = client_host(self.settings.http_host)
        out = [f"http://{host}:{getattr(self.settings, self.spec.http_port)}"]
        if self.spec.grpc_port is not None:
            out.append(f"grpc {host}:{getattr(self.settings, self.spec.grpc_port)}")
        return "  ".join(out)


def check_ports(settings: Settings, specs: Sequence[ServiceSpec]) -> None:
    """``ConfigError`` for the first port that is taken or named twice."""
    seen: dict[int, str] = {}
    wanted = [(s.http_port, getattr(settings, s.http_port)) for s in specs] + [
        (s.grpc_port, getattr(settings, s.grpc_port)) for s in specs if s.grpc_port
    ]
    if not settings.smtp_url:
        wanted.append(("mail_sink_port", settings.mail_sink_port))
    from ordermesh.errors import ConfigError

    for setting, port in wanted:
        variable = ENV_PREFIX + setting.upper()
        if port in seen:
            raise ConfigError(
                f"{variable} and {seen[port]} both name port {port}: give each its own", variable
            )
        seen[port] = variable
        bind(settings.http_host, port, setting).close()


def child_env(settings: Settings) -> dict[str, str]:
    """What every child is told: the shared broker, mail server and data dir, resolved here so
    that all of them agree, and this process's pid (they stop when it is gone)."""
    return {
        **os.environ,
        f"{ENV_PREFIX}DATA_DIR": str(settings.data_dir.resolve()),
        f"{ENV_PREFIX}BROKER_URL": settings.effective_broker_url,
        f"{ENV_PREFIX}SMTP_URL": settings.effective_smtp_url,
        f"{ENV_PREFIX}HTTP_HOST": settings.http_host,
        **{f"{ENV_PREFIX}{name.upper()}": str(getattr(settings, name)) for name in _PORTS},
        PARENT_PID: str(os.getpid()),
    }


_PORTS = (
    "http_port",
    "grpc_port",
    "notifications_http_port",
    "payments_http_port",
    "payments_grpc_port",
    "inventory_http_port",
    "inventory_grpc_port",
    "shipping_http_port",
)


async def _keep_running(child: Child, env: Mapping[str, str], stopping: asyncio.Event) -> None:
    backoff = BACKOFF_START
    loop = asyncio.get_running_loop()
    while not stopping.is_set():
        began = loop.time()
        # posix_spawn, not uvloop's fork(): see kit/spawn.py (gRPC's fork warning)
        child.process = spawn([sys.executable, "-m", "ordermesh", "run", child.name], env)
        code = await child.process.wait()
        if stopping.is_set():
            child.state = f"stopped ({code})"
            return
        child.exited.append(code)
        if loop.time() - began > STEADY_AFTER:
            backoff = BACKOFF_START
        child.state = f"exited {code}, restarting in {backoff:.0f} s"
        log.warning("%s exited with code %s; restarting in %.0f s", child.name, code, backoff)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), backoff)
        backoff = min(backoff * 2, BACKOFF_MAX)
        child.restarts += 1
        child.state = "restarting"


async def _stop(child: Child, grace: float = 10.0) -> None:
    process = child.process
    if process is None or process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        log.warning("%s did not stop within %.0f s: killed", child.name, grace)
        process.kill()
        await process.wait()


async def probe(url: str, timeout: float = 1.0) -> tuple[int, str]:
    """GET ``url``: its status and body (0 and the error when nothing answers)."""
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.get(url) as response,
        ):
            return response.status, await response.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, str(exc) or type(exc).__name__


async def wait_ready(children: Sequence[Child], timeout: float) -> None:
    """Until every child's /readyz answers 200 or ``timeout``; each child's state says which."""
    deadline = asyncio.get_running_loop().time() + timeout
    pending = list(children)
    while pending and asyncio.get_running_loop().time() < deadline:
        for child in list(pending):
            status, _ = await probe(child.health_url)
            if status == 200:
                child.state = "ready"
                pending.remove(child)
        if pending:
            await asyncio.sleep(0.1)  # polling other processes' endpoints: nothing to wait on
    for child in pending:
        status, body = await probe(child.health_url)
        child.state = f"not ready: {body[:120]}" if status else f"not answering ({child.state})"


async def supervise(
    settings: Settings,
    specs: Sequence[ServiceSpec],
    stop: asyncio.Event,
    on_ready: Callable[[Sequence[Child]], None],
    ready_timeout: float = 60.0,
) -> list[Child]:
    """Run ``specs`` as child processes until ``stop``; ``on_ready`` once they are up (or not)."""
    env = child_env(settings)
    children = [Child(spec, settings) for spec in specs]
    stopping = asyncio.Event()
    keepers = [asyncio.create_task(_keep_running(c, env, stopping), name=f"keep:{c.name}") for c in children]
    try:
        waiting = asyncio.create_task(wait_ready(children, ready_timeout))
        await asyncio.wait([waiting, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        if waiting.done():
            on_ready(children)
        else:
            waiting.cancel()
        await stop.wait()
    finally:
        stopping.set()
        await asyncio.gather(*(_stop(c) for c in children))
        await asyncio.gather(*keepers, return_exceptions=True)
    return children


__all__ = ["Child", "check_ports", "child_env", "probe", "supervise", "wait_ready"]
