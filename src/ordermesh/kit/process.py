"""One service as its own process (``ordermesh run NAME``): settings from the environment,
SIGINT/SIGTERM drain it and exit 0, and any start-up failure is one line and exit 1.

Started by ``ordermesh up`` (``ORDERMESH_PARENT_PID`` set), it also stops when that process is
gone, even after a kill -9 of the parent, so nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping

from ordermesh import logs, tuning
from ordermesh.config import Settings, load, private_files, redact_urls
from ordermesh.errors import OrdermeshError
from ordermesh.kit.runtime import ServiceSpec, started

log = logging.getLogger("ordermesh.kit")
# stamina logs every retry it schedules: during an outage, a line per call. The breakers log each
# change of state once and /metrics counts the retries, so only its errors are kept.
logging.getLogger("stamina").setLevel(logging.ERROR)
PARENT_PID = "ORDERMESH_PARENT_PID"
_CHATTY = ("aiormq", "aio_pika", "asyncpg")


def die_with(parent: int) -> None:
    """Be killed the moment ``parent`` dies (Linux: ``PR_SET_PDEATHSIG``), so a supervisor that
    is killed -9 takes its services, and their ports, with it at once: restarted right away, it
    finds the ports free. Set by the child itself, then checked, so a parent that died before
    the call is noticed too. Elsewhere the watchdog below notices within a second."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(0)


async def _orphaned(parent: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("parent process %d is gone: stopping", parent)
            stop.set()
        await asyncio.sleep(1.0)


async def run_until_signalled(spec: ServiceSpec, settings: Settings, parent: int = 0) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watchdog = asyncio.create_task(_orphaned(parent, stop)) if parent else None
    # While starting, a broker or database that refuses us is our one line, not the client
    # libraries' own retry chatter before it; once up, their reconnect lines are worth having.
    quiet = {name: logging.getLogger(name) for name in _CHATTY}
    levels = {name: logger.level for name, logger in quiet.items()}
    for logger in quiet.values():
        logger.setLevel(logging.CRITICAL)
    try:
        async with started(spec, settings):
            for name, logger in quiet.items():
                logger.setLevel(levels[name])
            await stop.wait()
    finally:
        for name, logger in quiet.items():
            logger.setLevel(levels[name])
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(spec: ServiceSpec, env: Mapping[str, str] | None = None) -> int:
    """Run ``spec`` until a signal; the process exit code."""
    source = os.environ if env is None else env
    try:
        settings = load(source)
    except OrdermeshError as exc:
        print(f"{spec.name}: {redact_urls(str(exc))}", file=sys.stderr)
        return 1
    level, loggers = settings.log_levels
    logs.configure(settings.log_format, level=level, service=spec.name, loggers=loggers)
    private_files(settings.data_dir)
    parent = int(source.get(PARENT_PID) or 0)
    if parent:
        die_with(parent)
    try:
        tuning.serve(run_until_signalled(spec, settings, parent))
    except (OrdermeshError, ValueError) as exc:
        # A port in use, a database or broker that refuses us, a malformed URL: say which and
        # what to do, in one line; the exit stack has already closed what was opened.
        print(f"{spec.name}: {redact_urls(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


__all__ = ["PARENT_PID", "main", "run_until_signalled"]
