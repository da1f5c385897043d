"""The gRPC server every ordermesh service runs: interceptors, health and reflection installed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any
from weakref import WeakKeyDictionary

import grpc
from grpc_health.v1 import _async as health_async  # type: ignore[import-untyped, unused-ignore]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection  # type: ignore[import-untyped, unused-ignore]
from prometheus_client import CollectorRegistry

from ordermesh.http.auth import Tokens
from ordermesh.rpc.interceptors import CallInterceptor

HEALTH_SERVICE: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_SERVICE: str = reflection.SERVICE_NAME

#: No SO_REUSEPORT: a second server on a taken port must fail, not silently share the traffic.
DEFAULT_OPTIONS: Sequence[tuple[str, Any]] = (("grpc.so_reuseport", 0),)


class _Health(health_async.HealthServicer):  # type: ignore[misc, unused-ignore]
    """The standard asyncio health service, with its services SERVING from the start (its
    ``set`` is a coroutine, and the server is built outside the event loop's calls)."""

    def __init__(self, services: Iterable[str]) -> None:
        super().__init__()
        statuses = self._server_status  # type: ignore[attr-defined, unused-ignore]
        for service in services:
            statuses[service] = health_pb2.HealthCheckResponse.SERVING


_health: WeakKeyDictionary[grpc.aio.Server, _Health] = WeakKeyDictionary()


def build_server(
    *,
    registrations: Sequence[Callable[[grpc.aio.Server], None]],
    service_names: Sequence[str],
    tokens: Tokens,
    metrics: CollectorRegistry | None = None,
    default_deadline: float = 10.0,
    options: Sequence[tuple[str, Any]] = DEFAULT_OPTIONS,
) -> grpc.aio.Server:
    """A server (not started, no port yet) with every service of ``registrations``.

    One interceptor (``rpc.interceptors.CallInterceptor``) does, outermost first: logging and
    metrics (they see every outcome, rejections included, with the final code and the whole
    duration), errors (the one place that turns exceptions into statuses, so auth just raises
    ``Unauthenticated``), auth, deadline (its timer covers the handler alone). ``metrics=None``
    collects none. Health (``""`` and every name in ``service_names`` SERVING) and reflection
    need no token.
    """
    interceptor = CallInterceptor(tokens, metrics=metrics, default_deadline=default_deadline)
    server = grpc.aio.server(interceptors=[interceptor], options=options)
    for register in registrations:
        register(server)
    health = _Health(["", *service_names])
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection([*service_names, HEALTH_SERVICE, REFLECTION_SERVICE], server)
    _health[server] = health
    return server


async def stop_server(server: grpc.aio.Server, grace: float) -> None:
    """Report NOT_SERVING (for good), refuse new calls, give running ones ``grace`` seconds,
    then cancel the rest: streams end with UNAVAILABLE, and their clients resume elsewhere."""
    health = _health.pop(server, None)
    if health is not None:
        await health.enter_graceful_shutdown()
    await server.stop(grace)
