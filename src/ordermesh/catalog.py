"""The services this system is made of, by name: what ``ordermesh up`` supervises and
``ordermesh run NAME`` runs. Imported lazily, so a process loads only the service it runs."""

from __future__ import annotations

import importlib

from ordermesh.config import SERVICES, ServiceName
from ordermesh.kit import ServiceSpec


def spec(name: ServiceName) -> ServiceSpec:
    loaded: ServiceSpec = importlib.import_module(f"ordermesh.services.{name}.spec").SPEC
    return loaded


__all__ = ["SERVICES", "spec"]
