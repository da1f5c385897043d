"""The services this system is made of, by name: what ``ordermesh up`` supervises and
``ordermesh run NAME`` runs. Imported lazily, so a process loads only the service it runs."""

from __future__ import annotations

import importlib

from ordermesh.config import SERVICES, ServiceName
from ordermesh.kit import ServiceSpec


def spec(name: ServiceName) -> ServiceSpec:
    loaded: ServiceSpec = importlib.import_module(f"ordermesh.services.{name}.spec").SPEC
    return loaded


def consumer_queues() -> list[str]:
    """Every queue a service of this system may consume, in service order."""
    return [queue for name in SERVICES for queue in spec(name).queues]


__all__ = ["SERVICES", "consumer_queues", "spec"]
