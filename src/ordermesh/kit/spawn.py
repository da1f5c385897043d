"""Starting a child process without ``fork()``: what ``ordermesh up`` starts its services with.

The supervisor runs on uvloop, whose subprocesses (libuv) start with ``fork()`` then ``exec``.
``fork()`` runs every handler registered with ``pthread_atfork``, and gRPC registers one when it
initialises: in a process where gRPC has threads at work (an OTLP/gRPC exporter, any channel)
it prints ``fork_posix.cc … Other threads are currently calling into gRPC, skipping fork()
handlers`` for each child. ``posix_spawn`` (glibc: a ``CLONE_VFORK`` child that goes straight
to ``exec``; macOS: a system call) runs no fork handler and copies nothing of the parent, which
is all a process that only execs needs. The exit is awaited on a pidfd (Linux 5.3+), else in a
thread.

:class:`Spawned` has the part of ``asyncio.subprocess.Process`` the supervisor uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence


class Spawned:
    """A child started by :func:`spawn`: its ``pid``, its ``returncode`` once :meth:`wait` saw
    it exit (negative: the signal that ended it), signals to it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited: asyncio.Task[int] | None = None

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:  # once reaped, the pid may be another process's
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        """The exit code, once the child has exited (any number of waiters; cancelling one
        leaves the others, and the reaping, alone)."""
        if self._exited is None:
            self._exited = asyncio.ensure_future(self._reap())
        return await asyncio.shield(self._exited)

    async def _reap(self) -> int:
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # not Linux, or before 5.3
            code = await asyncio.to_thread(_waitpid, self.pid, 0)
        else:
            loop = asyncio.get_running_loop()
            exited: asyncio.Future[None] = loop.create_future()

            def readable() -> None:
                if not exited.done():
                    exited.set_result(None)

            loop.add_reader(pidfd, readable)
            try:
                await exited
            finally:
                loop.remove_reader(pidfd)
                os.close(pidfd)
            code = _waitpid(self.pid, 0)  # it has exited: this returns at once
        self.returncode = code
        return code


def _waitpid(pid: int, options: int) -> int:
    _, status = os.waitpid(pid, options)
    return os.waitstatus_to_exitcode(status)


def spawn(argv: Sequence[str], env: Mapping[str, str], new_session: bool = True) -> Spawned:
    """Start ``argv`` (``argv[0]`` an absolute path) with ``env``, sharing this process's
    stdin, stdout and stderr; with ``new_session``, in a session of its own (a Ctrl-C at the
    terminal reaches the supervisor alone, which stops its children in order)."""
    pid = os.posix_spawn(argv[0], list(argv), dict(env), setsid=new_session)
    return Spawned(pid)


__all__ = ["Spawned", "spawn"]
