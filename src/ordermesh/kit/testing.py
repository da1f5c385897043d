"""Run a whole service inside a test's event loop, on ephemeral ports, through its real sockets."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ordermesh.clock import Clock
from ordermesh.config import Settings
from ordermesh.kit.runtime import Runtime, ServiceSpec, started


@contextlib.asynccontextmanager
async def running(
    spec: ServiceSpec, settings: Settings, clock: Clock | None = None
) -> AsyncIterator[Runtime]:
    """``spec`` built and serving (``rt.http_url``, ``rt.grpc_target``) until the block ends.
    Its ports are always ephemeral, whatever ``settings`` says."""
    ports: dict[str, Any] = {spec.http_port: 0}
    if spec.grpc_port is not None:
        ports[spec.grpc_port] = 0
    async with started(spec, settings.model_copy(update=ports), clock) as rt:
        yield rt


__all__ = ["running"]
