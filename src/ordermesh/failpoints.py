"""Failpoints: named places where a test can make the code fail, to prove what a crash there does.

Code marks a place with ``await failpoint("orders.after_append")``: unarmed (always, in
production) that is one dict lookup on an empty dict and an awaitable that is already done.

Armed, the place runs an action:

- ``kill``: the process sends itself SIGKILL, as ``kill -9`` would: no ``finally``, no
  cleanup, no response; what was committed stays committed.
- ``raise``: raises :class:`FailpointHit` (a server-side failure, not an ``OrdermeshError``).
- in-process only: any callable, sync or async, run at the place (to pause, count, or raise
  something of the test's choosing).

A process arms failpoints from the environment variable ``ORDERMESH_FAILPOINTS``, read once at
import: ``name=action`` pairs separated by commas, e.g.
``ORDERMESH_FAILPOINTS=orders.after_append=kill ordermesh run orders``. It is for tests only,
so it is deliberately not a ``Settings`` field (it is not configuration, and never in the README
table). A malformed value fails the import: a typo must not silently test nothing.
In-process tests use :func:`arm` / :func:`disarm` or the :func:`armed` context manager.
"""

from __future__ import annotations

import inspect
import os
import signal
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

ENV = "ORDERMESH_FAILPOINTS"

Action = Literal["kill", "raise"] | Callable[[], Awaitable[None] | None]


class FailpointHit(Exception):
    """Raised by a failpoint armed with ``raise``."""

    def __init__(self, name: str) -> None:
        super().__init__(f"failpoint {name!r} hit")
        self.name = name


def parse(spec: str) -> dict[str, Action]:
    """``"a=kill,b=raise"`` as ``{"a": "kill", "b": "raise"}``; ``""`` as ``{}``."""
    out: dict[str, Action] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, action = (s.strip() for s in part.partition("="))
        if not sep or not name or action not in ("kill", "raise"):
            raise ValueError(f"{ENV}: {part!r} is not NAME=kill or NAME=raise")
        out[name] = "kill" if action == "kill" else "raise"
    return out


def _from_env(environ: Mapping[str, str]) -> dict[str, Action]:
    return parse(environ.get(ENV, ""))


_armed: dict[str, Action] = _from_env(os.environ)


class _Done:
    """An awaitable that is already done: what an unarmed failpoint returns."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # makes this a generator function


_DONE = _Done()


def failpoint(name: str) -> Awaitable[None]:
    """Await at the place called ``name``; runs its action when armed, else returns at once."""
    action = _armed.get(name)
    if action is None:
        return _DONE
    return _run(name, action)


async def _run(name: str, action: Action) -> None:
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "raise":
        raise FailpointHit(name)
    if callable(action):
        result = action()
        if inspect.isawaitable(result):
            await result


def arm(name: str, action: Action) -> None:
    _armed[name] = action


def disarm(name: str) -> None:
    _armed.pop(name, None)


@contextmanager
def armed(name: str, action: Action) -> Iterator[None]:
    """``name`` armed with ``action`` inside the block, disarmed after it."""
    arm(name, action)
    try:
        yield
    finally:
        disarm(name)


__all__ = ["ENV", "Action", "FailpointHit", "arm", "armed", "disarm", "failpoint", "parse"]
