"""A service's downstreams as the kit wires them: one ``resilience.Guard`` per downstream, its
policy from settings (``Settings.policy(name)``), its state in ``/metrics`` and at
``GET /admin/breakers`` (service tokens only), which ``ordermesh breakers`` reads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ordermesh.auth import Tokens
from ordermesh.clock import Clock
from ordermesh.config import Settings
from ordermesh.http.bearer import service_caller
from ordermesh.resilience import Guards, Policy

BREAKERS_PATH = "/admin/breakers"
_STATES = {"closed": 0.0, "half_open": 1.0, "open": 2.0, "disabled": -1.0}


def guards_for(settings: Settings, clock: Clock | None = None) -> Guards:
    return Guards(clock, lambda name: Policy.from_settings(settings.policy(name), settings.breakers))


class _GuardCollector(Collector):
    def __init__(self, guards: Guards) -> None:
        self.guards = guards

    def collect(self) -> Iterator[Any]:
        rows = self.guards.snapshot()
        state = GaugeMetricFamily(
            "ordermesh_circuit_state",
            "circuit breaker state per downstream: 0 closed, 1 half-open, 2 open (-1: breakers off)",
            labels=["downstream"],
        )
        gauges = {
            "in_flight": GaugeMetricFamily(
                "ordermesh_bulkhead_in_flight", "calls in flight per downstream", labels=["downstream"]
            ),
            "bulkhead_limit": GaugeMetricFamily(
                "ordermesh_bulkhead_limit", "calls allowed in flight per downstream", labels=["downstream"]
            ),
        }
        counters = {
            "calls": ("ordermesh_downstream_calls", "calls to a downstream (retries not counted)"),
            "failures": ("ordermesh_circuit_failures", "infrastructure failures a breaker counted"),
            "rejected": ("ordermesh_circuit_rejected", "calls failed at once by an open breaker"),
            "opened": ("ordermesh_circuit_opened", "times a breaker opened"),
            "retries": ("ordermesh_downstream_retries", "retries made to a downstream"),
            "retry_budget_exhausted": (
                "ordermesh_retry_budget_exhausted",
                "retries not made because the downstream's retry budget was spent",
            ),
            "bulkhead_rejected": ("ordermesh_bulkhead_rejected", "calls refused by a full bulkhead"),
        }
        families = {
            key: CounterMetricFamily(name, doc, labels=["downstream"])
            for key, (name, doc) in counters.items()
        }
        for row in rows:
            labels = [row["downstream"]]
            state.add_metric(labels, _STATES[row["state"]])
            for key, gauge in gauges.items():
                gauge.add_metric(labels, float(row[key]))
            for key, family in families.items():
                family.add_metric(labels, float(row[key]))
        yield state
        yield from gauges.values()
        yield from families.values()


def install(app: FastAPI, registry: CollectorRegistry, tokens: Tokens, guards: Guards) -> None:
    """``/metrics`` families and ``GET /admin/breakers`` for ``guards``."""
    registry.register(_GuardCollector(guards))

    @app.get(BREAKERS_PATH, include_in_schema=False)
    async def breakers(request: Request) -> dict[str, Any]:
        service_caller(tokens, request)
        return {"downstreams": guards.snapshot()}


__all__ = ["BREAKERS_PATH", "guards_for", "install"]
