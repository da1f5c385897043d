"""uvicorn as a part of a larger process rather than the process itself."""

from __future__ import annotations

import contextlib
from collections.abc import Generator

import uvicorn


class OwnedSignals(uvicorn.Server):
    """uvicorn without its own signal handlers: the process's main coroutine owns SIGINT/SIGTERM
    and sets ``should_exit`` itself, once what must stop first has stopped (``ordermesh up``:
    HTTP drains before gRPC and the database close; the notification service: the consumers
    drain before their endpoint goes away)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


__all__ = ["OwnedSignals"]
