"""OpenTelemetry's SDK for one service process, installed only when spans are to be exported.

``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set: ``installed``
puts an SDK ``TracerProvider`` in place for the process, with a ``BatchSpanProcessor`` and the
OTLP exporter of ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``http/protobuf``, the default, or ``grpc``).
The resource names the process ``ordermesh-<service>`` unless ``OTEL_SERVICE_NAME`` says
otherwise (``OTEL_RESOURCE_ATTRIBUTES`` adds to it); the exporters, the batch processor and the
sampler read their own standard variables (``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_BSP_*``,
``OTEL_TRACES_SAMPLER``…). The service's edges and clients, built after this, see the SDK
(``tracing.enabled()``) and add the contrib instrumentations.

Unset (or ``OTEL_SDK_DISABLED=true``, or ``OTEL_TRACES_EXPORTER=none``): nothing is installed and
the SDK is not even imported; OpenTelemetry's API alone passes a caller's trace context through.
A provider already in place (the host application's, a test's, or the first of several services
run in one process) is left as it is: one per process.

At the block's end the provider is flushed and shut down, for at most ``SHUTDOWN_SECONDS``: a
collector that is down must not hold up a draining service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

from ordermesh import __version__, tracing
from ordermesh.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("ordermesh.kit")

SHUTDOWN_SECONDS = 5.0
PROTOCOLS = ("http/protobuf", "grpc")


def _setting(env: Mapping[str, str], name: str) -> str:
    """The traces-specific variable, else the general one (``OTEL_EXPORTER_OTLP_TRACES_X`` over
    ``OTEL_EXPORTER_OTLP_X``), as OpenTelemetry's exporters read them."""
    value = env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or env.get(f"OTEL_EXPORTER_OTLP_{name}") or ""
    return value.strip()


def export_protocol(env: Mapping[str, str]) -> str | None:
    """The OTLP protocol spans go out with, or None when this process exports none.
    ``ConfigError`` for an exporter or a protocol we do not ship."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if exporter == "none" or not _setting(env, "ENDPOINT"):
        return None
    if exporter != "otlp":
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER={exporter!r}: ordermesh exports traces over OTLP only (otlp or none)"
        )
    protocol = _setting(env, "PROTOCOL") or "http/protobuf"
    if protocol not in PROTOCOLS:
        raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    return protocol


def build_provider(service: str, protocol: str) -> TracerProvider:
    """An SDK provider exporting over OTLP with ``protocol``, its resource named for ``service``
    (the exporter takes its endpoint and the rest from the environment)."""
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

    exporter: SpanExporter
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        exporter = GrpcExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        exporter = HttpExporter()
    # Our name, unless OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES) says: the
    # variables merged last win (Resource.create alone lets its arguments win).
    ours = Resource.create({SERVICE_NAME: f"ordermesh-{service}", SERVICE_VERSION: __version__})
    resource = ours.merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)  # we shut it down, bounded
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


@contextlib.asynccontextmanager
async def installed(
    service: str, env: Mapping[str, str] | None = None
) -> AsyncIterator[TracerProvider | None]:
    """The SDK installed for ``service`` while the block runs, when the environment asks for
    export (see the module doc); the provider we installed, or None."""
    from opentelemetry import trace

    protocol = export_protocol(os.environ if env is None else env)
    if protocol is None or tracing.enabled():
        yield None
        return
    provider = build_provider(service, protocol)
    trace.set_tracer_provider(provider)
    log.info("%s: exporting traces over OTLP (%s)", service, protocol)
    try:
        yield provider
    finally:
        await shutdown(provider)


async def shutdown(provider: TracerProvider, timeout: float = SHUTDOWN_SECONDS) -> bool:
    """Flush and shut ``provider`` down off the event loop, waiting ``timeout`` seconds at most;
    whether it finished. A daemon thread, not the loop's executor: an export stuck on a dead
    collector must not keep the process from exiting either."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def finished() -> None:
        if not done.done():
            done.set_result(None)

    def run() -> None:
        try:
            provider.shutdown()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                loop.call_soon_threadsafe(finished)

    threading.Thread(target=run, name="otel-shutdown", daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(done), timeout)
    except TimeoutError:
        log.warning("traces: the exporter did not finish within %.0f s; the rest are dropped", timeout)
        return False
    return True


__all__ = ["PROTOCOLS", "SHUTDOWN_SECONDS", "build_provider", "export_protocol", "installed", "shutdown"]
