"""``kit.spawn``: how ``ordermesh up`` starts its children. Exit codes and signals as asyncio's
subprocesses report them, and no gRPC fork warning where uvloop's fork() prints one."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ordermesh.kit.spawn import spawn

FORK_WARNING = "skipping fork() handlers"
# A process in which gRPC has threads at work (a channel retrying a refused connection, as an
# OTLP/gRPC exporter's would) starts three children on uvloop, by kit.spawn or by asyncio's
# subprocess API (uvloop: libuv's fork()).
STARTER = """
import asyncio, contextlib, os, sys
import grpc, uvloop
from ordermesh.kit.spawn import spawn

async def main(how):
    channel = grpc.aio.insecure_channel("127.0.0.1:1")
    with contextlib.suppress(asyncio.TimeoutError, grpc.aio.AioRpcError):
        await asyncio.wait_for(channel.channel_ready(), 0.3)
    for _ in range(3):
        if how == "spawn":
            await spawn([sys.executable, "-c", "pass"], os.environ).wait()
        else:
            await (await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")).wait()
    await channel.close()
    print("started 3", file=sys.stderr)

uvloop.run(main(sys.argv[1]))
"""


async def test_a_child_reports_its_exit_code_and_the_signal_that_ended_it() -> None:
    done = spawn([sys.executable, "-c", "raise SystemExit(3)"], os.environ)
    assert await done.wait() == 3 and done.returncode == 3

    sleeper = spawn([sys.executable, "-c", "import time; time.sleep(60)"], os.environ)
    assert sleeper.returncode is None
    sleeper.send_signal(signal.SIGTERM)
    # Two waiters (the supervisor's keeper and its stop) get the same code; a cancelled one
    # takes nothing from the other.
    cancelled = asyncio.ensure_future(sleeper.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    assert await asyncio.wait_for(sleeper.wait(), 30) == -signal.SIGTERM
    sleeper.kill()  # reaped: a no-op, never a signal to whoever has the pid now


async def test_a_child_gets_the_environment_and_a_session_of_its_own(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = f"import os; open({str(out)!r}, 'w').write(os.environ['PROBE'] + ' ' + str(os.getsid(0)))"
    child = spawn([sys.executable, "-c", code], {**os.environ, "PROBE": "seen"})
    assert await asyncio.wait_for(child.wait(), 30) == 0
    probe, session = out.read_text().split()
    assert probe == "seen" and int(session) == child.pid and int(session) != os.getsid(0)


def test_children_start_without_the_grpc_fork_warning(tmp_path: Path) -> None:
    script = tmp_path / "starter.py"
    script.write_text(STARTER)

    def start(how: str) -> str:
        done = subprocess.run(
            [sys.executable, str(script), how], capture_output=True, text=True, timeout=60, check=True
        )
        assert "started 3" in done.stderr, done.stderr
        return done.stderr

    forked = start("fork")
    if FORK_WARNING not in forked:
        pytest.skip("this gRPC build prints no fork warning even for fork(): nothing to compare with")
    assert FORK_WARNING not in start("spawn")
