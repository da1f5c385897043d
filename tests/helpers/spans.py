"""An OpenTelemetry SDK for one test: ``with captured_spans() as spans`` installs a global
``TracerProvider`` that keeps every finished span in memory, and removes it afterwards.

OpenTelemetry lets a process set its global provider once; the removal resets that guard (as
``opentelemetry-test-utils`` does), so the next test runs without an SDK again, and apps or
clients it builds see none (``ordermesh.tracing.enabled()``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once


@contextlib.contextmanager
def captured_spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        trace._TRACER_PROVIDER = None
        trace._TRACER_PROVIDER_SET_ONCE = Once()


def named(spans: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    """The finished spans whose name starts with ``prefix``, in the order they ended."""
    return [s for s in spans.get_finished_spans() if s.name.startswith(prefix)]


__all__ = ["captured_spans", "named"]
