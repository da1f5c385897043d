"""Fault injection, transport-free: what is faulted in one service process, and the per-call and
per-delivery decisions. The transports apply them: ``http.faults`` (REST), ``rpc.faults`` (gRPC),
``messaging.faults`` (the bus); ``kit.admin`` sets them (``ordermesh faults``).

A process holds one :class:`Faults`: a link plan for every call INTO the service (the link
"anyone -> SERVICE") and a plan per queue it consumes. Faults live in memory only: a restart
clears them, and so does ``clear()``.

Link faults, per call, in this order: ``delay_ms`` added first; then ``hang`` (held until the
caller's deadline passes, then DEADLINE_EXCEEDED / 504), ``reset`` (the connection dropped, no
answer), ``blackhole`` (no answer at all: the caller's own timeout ends it) — each meets every
call, so at most one of them, and not with ``error_rate`` — or else ``error_rate``, the share of
calls answered UNAVAILABLE / 503 "injected fault".

Queue faults, per delivery: ``delay_ms`` before the handler runs; ``drop``, the share handed to
no handler and not acknowledged (as if the consumer died: it comes again, ``redelivered``);
``poison``, the share whose body is replaced by undecodable bytes (the consumer refuses it and the
broker dead-letters it with the reason); ``duplicate``, the share handed to the handler twice.

Randomness comes from an injectable ``random.Random`` and waiting from an injectable ``sleep``,
so tests decide every outcome and need no real time.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ordermesh.errors import FieldViolation, InfrastructureError, PermissionDenied, ValidationError

# MAX_DELAY_MS and TERMINAL moved to ``fault_plan`` but are still imported from here (``kit.admin``
# takes TERMINAL): the redundant aliases re-export them without widening ``__all__``.
from ordermesh.resilience.fault_plan import MAX_DELAY_MS as MAX_DELAY_MS
from ordermesh.resilience.fault_plan import NO_LINK as _NO_LINK
from ordermesh.resilience.fault_plan import TERMINAL as TERMINAL
from ordermesh.resilience.fault_plan import FaultPlan, LinkFaults, QueueFaults

log = logging.getLogger("ordermesh.faults")

Sleep = Callable[[float], Awaitable[None]]

#: How long a hang or a blackhole holds a call when no deadline is known.
HOLD_BOUND = 60.0
#: What a dropped delivery waits before it is handed out again (as a broker's redelivery).
REDELIVERY_PAUSE = 0.5
#: A poisoned delivery's body: neither UTF-8 nor JSON.
POISON = b"\xff\x00ordermesh: poisoned by an injected fault\xfe"


class FaultInjected(InfrastructureError):
    """The answer of an injected fault (UNAVAILABLE / 503): what an outage would answer."""


class FaultsNotAllowed(PermissionDenied):
    """Fault injection is off in this deployment (``ORDERMESH_FAULTS``)."""


class Outcome(enum.Enum):
    """What a call meets after its delay."""

    PASS = "pass"
    ERROR = "error"
    HANG = "hang"
    RESET = "reset"
    BLACKHOLE = "blackhole"


@dataclass(frozen=True, slots=True)
class DeliveryFaults:
    """What one delivery meets."""

    delay: float = 0.0  # seconds before the handler runs
    drop: bool = False
    poison: bool = False
    duplicate: bool = False


class Faults:
    """One service process's faults. ``link`` is None while calls pass untouched and ``queues``
    empty while deliveries do: the transports check that one attribute on their hot path.
    ``allowed`` (``Settings.faults_allowed``) False refuses any plan that faults something."""

    def __init__(
        self,
        service: str,
        *,
        allowed: bool = True,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.service = service
        self.allowed = allowed
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.link: LinkFaults | None = None
        self.queues: dict[str, QueueFaults] = {}
        self.consumed: set[str] = set()  # the queues this process consumes (``messaging.faults``)

    @property
    def plan(self) -> FaultPlan:
        return FaultPlan(self.link or _NO_LINK, dict(self.queues))

    def set(self, plan: FaultPlan, by: str = "") -> None:
        """Make ``plan`` the whole of this process's faults (what it does not name is cleared)."""
        if plan.active and not self.allowed:
            raise FaultsNotAllowed(
                f"{self.service}: fault injection is off in this deployment: set ORDERMESH_FAULTS=enabled "
                "for the service to allow it (by default only the embedded mode, `make up`, allows it)"
            )
        unknown = sorted(set(plan.queues) - self.consumed)
        if unknown:
            consumes = ", ".join(sorted(self.consumed)) or "none"
            raise ValidationError(
                f"{self.service} consumes no queue {unknown[0]!r} (it consumes: {consumes})",
                [FieldViolation(f"queues.{unknown[0]}", "not consumed by this service")],
            )
        if plan == self.plan:
            return
        self.link = plan.link if plan.link.active else None
        self.queues = dict(plan.queues)
        who = f" by {by}" if by else ""
        if plan.active:
            log.warning("%s: faults set%s: %s", self.service, who, plan.describe())
        else:
            log.warning("%s: faults cleared%s", self.service, who)

    def clear(self, by: str = "") -> None:
        self.set(FaultPlan(), by)

    def snapshot(self) -> dict[str, Any]:
        """The current plan as JSON-able data, with whether injection is allowed here and the
        queues a plan may name."""
        return {
            "service": self.service,
            "allowed": self.allowed,
            **self.plan.to_dict(),
            "consumes": sorted(self.consumed),
        }

    def chance(self, rate: float) -> bool:
        return rate >= 1.0 or (rate > 0.0 and self.rng.random() < rate)

    def decide_call(self) -> tuple[float, Outcome]:
        """A call's added delay (seconds) and what it meets then."""
        link = self.link
        if link is None:
            return 0.0, Outcome.PASS
        delay = link.delay_ms / 1000
        if link.hang:
            return delay, Outcome.HANG
        if link.reset:
            return delay, Outcome.RESET
        if link.blackhole:
            return delay, Outcome.BLACKHOLE
        return delay, Outcome.ERROR if self.chance(link.error_rate) else Outcome.PASS

    def decide_delivery(self, plan: QueueFaults) -> DeliveryFaults:
        """What one delivery of a queue with ``plan`` meets (a dropped one is not poisoned)."""
        drop = self.chance(plan.drop)
        return DeliveryFaults(
            delay=plan.delay_ms / 1000,
            drop=drop,
            poison=not drop and self.chance(plan.poison),
            duplicate=not drop and self.chance(plan.duplicate),
        )

    def error(self) -> FaultInjected:
        """The error an injected failure answers with."""
        rate = self.link.error_rate if self.link is not None else 0.0
        return FaultInjected(f"injected fault: calls into {self.service} fail ({rate:.0%} of them)")


__all__ = [
    "HOLD_BOUND",
    "POISON",
    "REDELIVERY_PAUSE",
    "DeliveryFaults",
    "FaultInjected",
    "FaultPlan",
    "Faults",
    "FaultsNotAllowed",
    "LinkFaults",
    "Outcome",
    "QueueFaults",
]
