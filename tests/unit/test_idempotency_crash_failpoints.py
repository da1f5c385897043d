"""The failpoint facility the crash tests rely on: no-op unless armed, armed in-process or by
ORDERMESH_FAILPOINTS, and ``kill`` is a real SIGKILL of the process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from ordermesh import failpoints
from ordermesh.failpoints import ENV, FailpointHit, failpoint

_NAME = "tests.somewhere"


async def test_unarmed_failpoints_do_nothing() -> None:
    assert failpoint(_NAME) is failpoint("another.place"), "one shared done awaitable, nothing built"
    await failpoint(_NAME)


async def test_armed_in_process_with_raise_or_a_callable_then_disarmed() -> None:
    with failpoints.armed(_NAME, "raise"), pytest.raises(FailpointHit, match=_NAME):
        await failpoint(_NAME)
    await failpoint(_NAME)  # disarmed on leaving the block

    hits: list[str] = []

    async def pause() -> None:
        hits.append("async")

    with failpoints.armed(_NAME, pause):
        await failpoint(_NAME)
    with failpoints.armed(_NAME, lambda: hits.append("sync")):
        await failpoint(_NAME)
    assert hits == ["async", "sync"]


def test_the_environment_spec_is_parsed_strictly() -> None:
    assert failpoints.parse("") == {}
    assert failpoints.parse(" a.b=kill , c=raise ") == {"a.b": "kill", "c": "raise"}
    for bad in ("a", "a=explode", "=kill", "a=kill,b"):
        with pytest.raises(ValueError, match=ENV):
            failpoints.parse(bad)


def _python(code: str, spec: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, ENV: spec}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)


_HIT = """
import asyncio
from ordermesh.failpoints import failpoint

async def main() -> None:
    await failpoint("x.y")

asyncio.run(main())
print("alive")
"""


def test_a_process_armed_by_the_environment_kills_itself_at_the_place() -> None:
    done = _python(_HIT, "x.y=kill")
    assert (done.returncode, done.stdout) == (-signal.SIGKILL, "")
    assert _python(_HIT, "other.place=kill").stdout == "alive\n"
    refused = _python(_HIT, "x.y=explode")
    assert refused.returncode == 1 and "ORDERMESH_FAILPOINTS" in refused.stderr
