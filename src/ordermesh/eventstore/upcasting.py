"""Event schema evolution: upcasters lift stored events to the shape the code reads today."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class Upcasters:
    """A chain of ``(type, from_version) -> upcaster`` steps, each lifting one version.

    Stored events are never rewritten; the chain runs on read, so an event written years ago
    loads in the current shape.
    """

    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], Upcaster] = {}

    def register(self, event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        def decorate(fn: Upcaster) -> Upcaster:
            key = (event_type, from_version)
            if key in self._steps:
                raise ValueError(f"an upcaster for {event_type} v{from_version} is already registered")
            self._steps[key] = fn
            return fn

        return decorate

    def upcast(self, event_type: str, version: int, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        step = self._steps.get((event_type, version))
        while step is not None:
            data = step(dict(data))
            version += 1
            step = self._steps.get((event_type, version))
        return version, data
