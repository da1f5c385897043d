"""A bulkhead per downstream: at most ``limit`` calls in flight; one more is refused at once
(``BulkheadFull``, an ``InfrastructureError``) rather than queued, so a slow downstream cannot
gather every task of the caller behind it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from ordermesh.errors import InfrastructureError

T = TypeVar("T")


class BulkheadFull(InfrastructureError):
    """Too many calls to this downstream are in flight: this one was not made."""


class Bulkhead:
    def __init__(self, name: str, limit: int) -> None:
        if limit < 1:
            raise ValueError("a bulkhead admits at least one call")
        self.name, self.limit = name, limit
        self.in_flight = 0
        self.rejected = 0

    def enter(self) -> None:
        """Take a place, or raise ``BulkheadFull``; ``leave`` gives it back."""
        if self.in_flight >= self.limit:
            self.rejected += 1
            raise BulkheadFull(f"{self.name} is busy: {self.limit} calls already in flight")
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        self.enter()
        try:
            return await fn()
        finally:
            self.leave()


__all__ = ["Bulkhead", "BulkheadFull"]
