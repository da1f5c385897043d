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
import math
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ordermesh.errors import FieldViolation, InfrastructureError, PermissionDenied, ValidationError

log = logging.getLogger("ordermesh.faults")

Sleep = Callable[[float], Awaitable[None]]

#: How long a hang or a blackhole holds a call when no deadline is known.
HOLD_BOUND = 60.0
#: The longest delay one may inject (ten minutes): anything longer is a hang.
MAX_DELAY_MS = 600_000.0
#: What a dropped delivery waits before it is handed out again (as a broker's redelivery).
REDELIVERY_PAUSE = 0.5
#: A poisoned delivery's body: neither UTF-8 nor JSON.
POISON = b"\xff\x00ordermesh: poisoned by an injected fault\xfe"
TERMINAL = ("hang", "reset", "blackhole")


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


def _invalid(where: str, message: str, short: str) -> ValidationError:
    return ValidationError(f"{where}: {message}", [FieldViolation(where, short)])


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _invalid(where, f"expected a number, got {value!r}", "not a number")
    return float(value)


def _rate(where: str, value: Any) -> float:
    rate = _number(where, value)
    if not 0.0 <= rate <= 1.0:
        raise _invalid(
            where, f"a share of calls or deliveries, from 0 to 1, not {rate:g}", "out of range 0..1"
        )
    return rate


def _delay(where: str, value: Any) -> float:
    ms = _number(where, value)
    if not 0.0 <= ms <= MAX_DELAY_MS:
        raise _invalid(
            where, f"milliseconds from 0 to {MAX_DELAY_MS:g}, not {ms:g}", f"out of range 0..{MAX_DELAY_MS:g}"
        )
    return ms


def _flag(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _invalid(where, f"expected true or false, got {value!r}", "not a boolean")
    return value


def _fields(where: str, doc: Any, known: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise _invalid(where, f"expected an object, got {doc!r}", "not an object")
    for key in doc:
        if key not in known:
            raise _invalid(f"{where}.{key}", f"unknown field: expected {', '.join(known)}", "unknown field")
    return doc


@dataclass(frozen=True, slots=True)
class LinkFaults:
    """Faults on every call into the service (see the module doc); validated on creation."""

    error_rate: float = 0.0
    delay_ms: float = 0.0
    hang: bool = False
    reset: bool = False
    blackhole: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "error_rate", _rate("link.error_rate", self.error_rate))
        object.__setattr__(self, "delay_ms", _delay("link.delay_ms", self.delay_ms))
        chosen = [name for name in TERMINAL if _flag(f"link.{name}", getattr(self, name))]
        if len(chosen) > 1 or (chosen and self.error_rate):
            named = ", ".join(chosen + ["error_rate"] * bool(self.error_rate))
            raise _invalid(
                "link",
                f"{named} cannot go together: hang, reset and blackhole each meet every call, "
                "so set one of them (with a delay if you like), or an error rate",
                "conflicting faults",
            )

    @property
    def active(self) -> bool:
        return self != _NO_LINK

    @classmethod
    def from_dict(cls, doc: Any) -> LinkFaults:
        return cls(**_fields("link", doc, _LINK_FIELDS))

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _LINK_FIELDS}


@dataclass(frozen=True, slots=True)
class QueueFaults:
    """Faults on the deliveries of one consumer queue (see the module doc)."""

    duplicate: float = 0.0
    delay_ms: float = 0.0
    drop: float = 0.0
    poison: float = 0.0
    queue: str = field(default="", compare=False, repr=False)  # names the plan in messages only

    def __post_init__(self) -> None:
        where = f"queues.{self.queue}" if self.queue else "queue"
        for name in ("duplicate", "drop", "poison"):
            object.__setattr__(self, name, _rate(f"{where}.{name}", getattr(self, name)))
        object.__setattr__(self, "delay_ms", _delay(f"{where}.delay_ms", self.delay_ms))

    @property
    def active(self) -> bool:
        return bool(self.duplicate or self.delay_ms or self.drop or self.poison)

    @classmethod
    def from_dict(cls, queue: str, doc: Any) -> QueueFaults:
        return cls(**_fields(f"queues.{queue}", doc, _QUEUE_FIELDS), queue=queue)

    def to_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in _QUEUE_FIELDS}


_NO_LINK = LinkFaults()
_LINK_FIELDS = tuple(f.name for f in fields(LinkFaults))
_QUEUE_FIELDS = tuple(f.name for f in fields(QueueFaults) if f.name != "queue")


@dataclass(frozen=True)
class FaultPlan:
    """Everything faulted in one service: its link and its queues (those with a fault only)."""

    link: LinkFaults = _NO_LINK
    queues: Mapping[str, QueueFaults] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.link.active or any(plan.active for plan in self.queues.values())

    @classmethod
    def from_dict(cls, doc: Any) -> FaultPlan:
        """The plan of a JSON document ``{"link": {...}, "queues": {"QUEUE": {...}}}`` (either
        may be left out); ``ValidationError`` naming the first offending field."""
        doc = _fields("plan", doc, ("link", "queues"))
        link = LinkFaults.from_dict(doc["link"]) if doc.get("link") is not None else _NO_LINK
        queues = doc.get("queues") or {}
        if not isinstance(queues, Mapping):
            raise _invalid("queues", f"expected an object of queue plans, got {queues!r}", "not an object")
        plans: dict[str, QueueFaults] = {}
        for queue, queue_doc in queues.items():
            if not isinstance(queue, str) or not queue.strip():
                raise _invalid("queues", "a queue's name must not be empty", "empty queue name")
            plans[queue] = QueueFaults.from_dict(queue, queue_doc)
        return cls(link, {queue: plan for queue, plan in plans.items() if plan.active})

    def to_dict(self) -> dict[str, Any]:
        return {
            "link": self.link.to_dict(),
            "queues": {queue: plan.to_dict() for queue, plan in sorted(self.queues.items())},
        }

    def describe(self) -> str:
        """One line for logs: only what is set (``link error_rate=0.5 delay_ms=100; queue q drop=1``)."""
        parts = []
        if self.link.active:
            parts.append("link " + _settings(self.link.to_dict()))
        parts += [f"queue {queue} {_settings(plan.to_dict())}" for queue, plan in sorted(self.queues.items())]
        return "; ".join(parts) or "none"


def _settings(values: Mapping[str, Any]) -> str:
    return " ".join(name if value is True else f"{name}={value:g}" for name, value in values.items() if value)


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
