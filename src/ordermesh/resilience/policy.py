"""How calls to one downstream are guarded, as data: a ``Policy`` per downstream, read from the
settings (``Settings.policy(name)``: the global ``ORDERMESH_*`` resilience settings with the
downstream's ``ORDERMESH_POLICIES`` overrides). ``resilience.guard.Guard`` applies it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ordermesh.errors import InfrastructureError
from ordermesh.resilience.retry import RetryPolicy


class DeadlineExceeded(InfrastructureError):
    """No time was left for the call (the caller's deadline passed): it was not made."""


@dataclass(frozen=True)
class Policy:
    """How calls to one downstream are guarded. ``Policy.from_settings`` reads the ``ORDERMESH_*``
    resilience settings (``Settings.policy(name)``: the global ones with the downstream's
    overrides)."""

    timeout: float = 5.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retry_budget: float = 0.2
    breaker_failures: int = 5
    breaker_failure_rate: float | None = 0.5
    breaker_window: int = 20
    breaker_open_for: float = 5.0
    bulkhead: int = 64
    enabled: bool = True

    @classmethod
    def from_settings(cls, values: Mapping[str, float], enabled: bool = True) -> Policy:
        return cls(
            timeout=values["call_timeout"],
            retry=RetryPolicy(attempts=int(values["retry_attempts"])),
            retry_budget=values["retry_budget"],
            breaker_failures=int(values["breaker_failures"]),
            breaker_failure_rate=values["breaker_failure_rate"],
            breaker_window=int(values["breaker_window"]),
            breaker_open_for=values["breaker_open_seconds"],
            bulkhead=int(values["bulkhead_limit"]),
            enabled=enabled,
        )


__all__ = ["DeadlineExceeded", "Policy"]
