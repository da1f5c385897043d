"""ordermesh as its own processes, as a user runs it: ``ordermesh up`` (the supervisor and its
five services), ``ordermesh run NAME`` one by one (``Fleet``), and the CLI.

Every process's output goes to a file, never to a pipe: nobody reads a pipe while the process
runs, and once it is full the process blocks on its next log line. A process is ready when its
``/readyz`` answers 200; until then it is polled (another process's state has no notification),
within the suite's ``PROCESS_TIMEOUT``. Each starts with the caller's environment minus every
``ORDERMESH_*`` variable (a developer's own settings must not leak in), on free ports, with its
own data dir.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO

import pytest
import requests

from tests.helpers.servers import free_port
from tests.helpers.timing import PROCESS_TIMEOUT, eventually_sync, scaled

BIN = Path(sys.executable).parent / "ordermesh"

# Each service's HTTP port (/livez, /readyz, /metrics), by the variable that sets it.
HTTP_PORTS = {
    "orders": "ORDERMESH_HTTP_PORT",
    "payments": "ORDERMESH_PAYMENTS_HTTP_PORT",
    "inventory": "ORDERMESH_INVENTORY_HTTP_PORT",
    "shipping": "ORDERMESH_SHIPPING_HTTP_PORT",
    "notifications": "ORDERMESH_NOTIFICATIONS_HTTP_PORT",
}
OTHER_PORTS = (
    "ORDERMESH_GRPC_PORT",
    "ORDERMESH_PAYMENTS_GRPC_PORT",
    "ORDERMESH_INVENTORY_GRPC_PORT",
    "ORDERMESH_MAIL_SINK_PORT",
)
UP_LOG = "up.log"  # ``start_up``'s output, in the directory it is given


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ``ORDERMESH_*`` variable, plus ``extra``."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("ORDERMESH_")}, **extra}


def free_ports(variables: Iterable[str]) -> dict[str, str]:
    return {variable: str(free_port()) for variable in variables}


def cli(env: dict[str, str], *args: str) -> str:
    """``ordermesh ARGS`` run to completion (it must succeed); what it printed."""
    done = subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def tail(log: Path, size: int = 3000) -> str:
    return log.read_text(errors="replace")[-size:] if log.exists() else "(no output)"


def wait_ready(
    proc: subprocess.Popen[bytes], urls: Iterable[str], log: Path, timeout: float = PROCESS_TIMEOUT
) -> None:
    """Return once every URL answers 200; fail with the end of ``log`` if ``proc`` exits first or
    the (scaled) timeout passes."""
    waiting = set(urls)

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"exited with code {proc.returncode} before it was ready:\n{tail(log)}")
        for url in list(waiting):
            with contextlib.suppress(requests.ConnectionError, requests.Timeout):
                if requests.get(url, timeout=1).status_code == 200:
                    waiting.discard(url)
        return not waiting

    try:
        eventually_sync(ready, timeout, what="/readyz")
    except AssertionError:
        proc.kill()
        proc.wait()
        pytest.fail(f"not ready within {scaled(timeout):.0f} s: {sorted(waiting)}\n{tail(log)}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, timeout: float = 30) -> int:
    """Signal ``proc`` (Ctrl-C by default) and wait for it; killed if it does not end within the
    (scaled) timeout. Its exit code (negative: the signal that ended it)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(scaled(timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def start_service(
    service: str, env: dict[str, str], http_port: str, log: Path, timeout: float = PROCESS_TIMEOUT
) -> subprocess.Popen[bytes]:
    """``ordermesh run SERVICE`` as its own process, returned once its /readyz answers 200.
    Its stderr is appended to ``log``."""
    with log.open("ab") as out:
        proc = subprocess.Popen([str(BIN), "run", service], env=env, stdout=subprocess.DEVNULL, stderr=out)
    wait_ready(proc, [f"http://127.0.0.1:{http_port}/readyz"], log, timeout)
    return proc


def health_urls(env: dict[str, str]) -> dict[str, str]:
    """Each of the five services' /readyz, by URL."""
    return {f"http://127.0.0.1:{env[variable]}/readyz": name for name, variable in HTTP_PORTS.items()}


def start_up(
    tmp_path: Path,
    port: int | None = None,
    grpc_port: int | None = None,
    broker_url: str | None = None,
    *,
    with_stdout: bool = True,
    extra: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    """``ordermesh up`` (free ports unless given, its data dir under ``tmp_path``, ``extra`` in its
    environment), returned once all five services answer /readyz: the process, the order API's
    URL and the environment (every port in it). Its stderr, and its stdout (the banner) unless
    ``with_stdout`` is false, are appended to ``tmp_path / UP_LOG``."""
    port = port or free_port()
    env = clean_env(ORDERMESH_DATA_DIR=str(tmp_path / "data"), COLUMNS="200")
    env |= free_ports([*HTTP_PORTS.values(), *OTHER_PORTS])
    env |= {"ORDERMESH_HTTP_PORT": str(port), "ORDERMESH_GRPC_PORT": str(grpc_port or free_port())}
    if broker_url is not None:
        env["ORDERMESH_BROKER_URL"] = broker_url
    env |= extra or {}
    log = tmp_path / UP_LOG
    with log.open("ab") as out:
        stdout: int | IO[bytes] = out if with_stdout else subprocess.DEVNULL
        proc = subprocess.Popen([str(BIN), "up", "--port", str(port)], env=env, stdout=stdout, stderr=out)
    wait_ready(proc, health_urls(env), log)
    return proc, f"http://127.0.0.1:{port}", env


@contextlib.contextmanager
def up(
    tmp_path: Path, *, with_stdout: bool = True, **extra: str
) -> Iterator[tuple[str, dict[str, str], Path]]:
    """``ordermesh up`` (as ``start_up`` starts it) until the block ends, then Ctrl-C, and it must
    exit 0: the order API's URL, the environment, and the file its output goes to."""
    proc, url, env = start_up(tmp_path, with_stdout=with_stdout, extra=extra)
    log = tmp_path / UP_LOG
    try:
        yield url, env, log
    finally:
        code = stop(proc)
    assert code == 0, tail(log)


class Fleet:
    """Services each in its own process (``ordermesh run NAME``), sharing the data dir's broker;
    each one's stderr in ``logs / NAME.log``."""

    def __init__(self, data: Path) -> None:
        self.env = clean_env(ORDERMESH_DATA_DIR=str(data), ORDERMESH_SAGA_DEADLINE="60")
        self.env |= free_ports([*HTTP_PORTS.values(), *OTHER_PORTS])
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = data.parent

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.env[HTTP_PORTS[service]]}"

    def start(self, service: str, **extra: str) -> subprocess.Popen[bytes]:
        port = self.env[HTTP_PORTS[service]]
        proc = start_service(service, {**self.env, **extra}, port, self.logs / f"{service}.log")
        self.procs[service] = proc
        return proc

    def stop_all(self) -> None:
        """SIGTERM to every running service at once, then wait for each (kill -9 at 20 s)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            stop(proc, signal.SIGTERM, timeout=20)


__all__ = [
    "BIN",
    "HTTP_PORTS",
    "OTHER_PORTS",
    "UP_LOG",
    "Fleet",
    "clean_env",
    "cli",
    "free_ports",
    "health_urls",
    "start_service",
    "start_up",
    "stop",
    "tail",
    "up",
    "wait_ready",
]
