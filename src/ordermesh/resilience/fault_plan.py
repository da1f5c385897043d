"""The fault plans of ``resilience.faults``: what may be faulted in one service, its link and each
queue it consumes, validated on creation and read from JSON (``ordermesh faults``, ``PUT
/admin/faults``) with a ``ValidationError`` naming the first offending field. What each fault does
to a call or a delivery is told in ``resilience.faults``' module doc; deciding it is done there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ordermesh.errors import FieldViolation, ValidationError

#: The longest delay one may inject (ten minutes): anything longer is a hang.
MAX_DELAY_MS = 600_000.0
#: The link faults that meet every call, so at most one may be set.
TERMINAL = ("hang", "reset", "blackhole")


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
        return self != NO_LINK

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


#: The link plan that faults nothing (a plan's default).
NO_LINK = LinkFaults()
_LINK_FIELDS = tuple(f.name for f in fields(LinkFaults))
_QUEUE_FIELDS = tuple(f.name for f in fields(QueueFaults) if f.name != "queue")


@dataclass(frozen=True)
class FaultPlan:
    """Everything faulted in one service: its link and its queues (those with a fault only)."""

    link: LinkFaults = NO_LINK
    queues: Mapping[str, QueueFaults] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.link.active or any(plan.active for plan in self.queues.values())

    @classmethod
    def from_dict(cls, doc: Any) -> FaultPlan:
        """The plan of a JSON document ``{"link": {...}, "queues": {"QUEUE": {...}}}`` (either
        may be left out); ``ValidationError`` naming the first offending field."""
        doc = _fields("plan", doc, ("link", "queues"))
        link = LinkFaults.from_dict(doc["link"]) if doc.get("link") is not None else NO_LINK
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


__all__ = ["MAX_DELAY_MS", "NO_LINK", "TERMINAL", "FaultPlan", "LinkFaults", "QueueFaults"]
