"""The gRPC server every ordermesh service runs: interceptors, health and reflection installed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast
from weakref import WeakKeyDictionary

import grpc
import grpc_reflection.v1alpha.reflection_pb2_grpc as reflection_grpc  # type: ignore[import-untyped, unused-ignore]
from grpc_health.v1 import _async as health_async  # type: ignore[import-untyped, unused-ignore]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection  # type: ignore[import-untyped, unused-ignore]
from prometheus_client import CollectorRegistry

from ordermesh import tracing
from ordermesh.auth import Tokens
from ordermesh.resilience.faults import Faults
from ordermesh.rpc.interceptors import PUBLIC_METHOD_PREFIXES, CallInterceptor

HEALTH_SERVICE: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_SERVICE: str = reflection.SERVICE_NAME

#: The largest message a server takes or sends: a bigger request is refused with
#: RESOURCE_EXHAUSTED before it is decoded, and a bigger answer fails the same way rather than
#: reach a client that (by gRPC's default, 4 MiB too) would refuse it anyway.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

#: No SO_REUSEPORT: a second server on a taken port must fail, not silently share the traffic.
DEFAULT_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)


class _Health(health_async.HealthServicer):  # type: ignore[misc, unused-ignore]
    """The standard asyncio health service, with its services SERVING from the start (its
    ``set`` is a coroutine, and the server is built outside the event loop's calls)."""

    def __init__(self, services: Iterable[str]) -> None:
        super().__init__()
        statuses = self._server_status  # type: ignore[attr-defined, unused-ignore]
        for service in services:
            statuses[service] = health_pb2.HealthCheckResponse.SERVING


_health: WeakKeyDictionary[grpc.aio.Server, _Health] = WeakKeyDictionary()


class _WrappedGeneric(grpc.GenericRpcHandler):
    """A generic handler whose method handlers come out wrapped (once per method)."""

    def __init__(self, inner: grpc.GenericRpcHandler, interceptor: CallInterceptor) -> None:
        self._inner = inner
        self._interceptor = interceptor
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[method] = (handler, self._interceptor.wrap(handler, method))
        return cached[1]


class _Wrapping:
    """The server as the registrations see it: every handler they add is wrapped by the
    ``CallInterceptor`` there and then. Passed to grpc.aio as an interceptor instead, it would
    run through grpc.aio's interceptor pipeline on every call, a coroutine chain that cost
    ~45 µs a call here (bench/grpc_orders.py), more than the handlers' own work."""

    def __init__(self, server: grpc.aio.Server, interceptor: CallInterceptor) -> None:
        self._server = server
        self._interceptor = interceptor

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        wrap = self._interceptor.wrap
        self._server.add_registered_method_handlers(
            service, {name: wrap(handler, f"/{service}/{name}") for name, handler in handlers.items()}
        )

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_WrappedGeneric(h, self._interceptor) for h in handlers))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


def build_server(
    *,
    registrations: Sequence[Callable[[grpc.aio.Server], None]],
    service_names: Sequence[str],
    tokens: Tokens,
    metrics: CollectorRegistry | None = None,
    default_deadline: float = 10.0,
    options: Sequence[tuple[str, Any]] = DEFAULT_OPTIONS,
    faults: Faults | None = None,
) -> grpc.aio.Server:
    """A server (not started, no port yet) with every service of ``registrations``.

    One wrapper (``rpc.interceptors.CallInterceptor``, applied to every handler as it is
    registered, not as a grpc.aio interceptor: see ``_Wrapping``) does, outermost first: logging and
    metrics (they see every outcome, rejections included, with the final code and the whole
    duration), errors (the one place that turns exceptions into statuses, so auth just raises
    ``Unauthenticated``), injected ``faults`` (``rpc.faults``), auth, deadline (its timer covers
    the handler alone). With an OpenTelemetry SDK installed, OpenTelemetry's interceptor runs
    in front of it all (``_tracing_interceptors``). ``metrics=None`` collects none. Health
    (``""`` and every name in ``service_names`` SERVING) and reflection need no token and are
    never faulted.
    """
    traced = tracing.enabled()
    interceptor = CallInterceptor(
        tokens, metrics=metrics, default_deadline=default_deadline, faults=faults, traced=traced
    )
    server = grpc.aio.server(options=options, interceptors=_tracing_interceptors() if traced else None)
    wrapping = cast(grpc.aio.Server, _Wrapping(server, interceptor))
    for register in registrations:
        register(wrapping)
    health = _Health(["", *service_names])
    health_pb2_grpc.add_HealthServicer_to_server(health, wrapping)
    # What enable_server_reflection does for a grpc.aio server (it tells one by isinstance,
    # which the wrapping proxy is not).
    reflection_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer([*service_names, HEALTH_SERVICE, REFLECTION_SERVICE]), wrapping
    )
    _health[server] = health
    return server


def _tracing_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """OpenTelemetry's server interceptor (a SERVER span per call, the caller's context
    continued), for every method but health and reflection, which probes call all the time. A
    grpc.aio interceptor, unlike ``CallInterceptor``: its cost (~45 µs a call, see ``_Wrapping``)
    is paid only with an SDK installed, when a span is made anyway."""
    from opentelemetry.instrumentation.grpc import (  # type: ignore[import-untyped, unused-ignore]
        aio_server_interceptor,
        filters,
    )

    untraced = filters.any_of(
        *(filters.service_prefix(prefix.strip("/")) for prefix in PUBLIC_METHOD_PREFIXES)
    )
    return [aio_server_interceptor(filter_=filters.negate(untraced))]  # type: ignore[no-untyped-call]


async def stop_server(server: grpc.aio.Server, grace: float) -> None:
    """Report NOT_SERVING (for good), refuse new calls, give running ones ``grace`` seconds,
    then cancel the rest: streams end with UNAVAILABLE, and their clients resume elsewhere."""
    health = _health.pop(server, None)
    if health is not None:
        await health.enter_graceful_shutdown()
    await server.stop(grace)
