"""What a saga is and what is recorded of it: one record per saga, the same whichever style ran
it (orchestrated calls or choreographed events), so one view and one test suite serve both.

A saga is a sequence of steps, each with an optional compensation. It ends ``completed`` (every
step done), or ``compensated`` (a step failed for good, or the saga ran past its deadline, and
every step done before it was undone, last first). ``failed`` is for what no compensation can
fix: a bug, recorded so an operator finds it (``ordermesh saga list --state failed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

State = Literal["running", "compensating", "completed", "compensated", "failed"]
TERMINAL: frozenset[str] = frozenset({"completed", "compensated", "failed"})
Style = Literal["orchestrated", "choreographed"]
Kind = Literal["action", "compensation"]
# "parked": the downstream's circuit breaker is open; the step waits for it to let a probe through.
Outcome = Literal["running", "succeeded", "failed", "retrying", "parked"]


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One step (or one compensation) as it went: attempts, outcome, when."""

    name: str
    service: str
    kind: Kind = "action"
    outcome: Outcome = "running"
    attempts: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    detail: str = ""  # the last failure, or what the step produced (a payment id, a tracking id)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "service": self.service,
            "kind": self.kind,
            "outcome": self.outcome,
            "attempts": self.attempts,
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> StepRecord:
        return cls(
            name=doc["name"],
            service=doc["service"],
            kind=doc["kind"],
            outcome=doc["outcome"],
            attempts=int(doc["attempts"]),
            started_at=_time(doc.get("started_at")),
            ended_at=_time(doc.get("ended_at")),
            detail=doc.get("detail", ""),
        )


@dataclass(frozen=True, slots=True)
class SagaRecord:
    """A saga's durable state. ``version`` guards writes (compare-and-set), so two drivers can
    never both move one saga; ``wake_at`` is its durable timer (a retry or the deadline)."""

    saga_id: str
    name: str
    style: Style
    state: State
    data: dict[str, Any]
    started_at: datetime
    deadline_at: datetime
    updated_at: datetime
    steps: tuple[StepRecord, ...] = ()
    position: int = 0  # the next action to run; while compensating, the next to undo is below it
    reason: str = ""  # why it compensated or failed
    wake_at: datetime | None = None
    version: int = 0

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def step(self, name: str, kind: Kind = "action") -> StepRecord | None:
        return next((s for s in reversed(self.steps) if s.name == name and s.kind == kind), None)

    def with_step(self, record: StepRecord) -> SagaRecord:
        """This saga with ``record`` replacing its namesake (same name and kind), or appended."""
        steps = list(self.steps)
        for i, s in enumerate(steps):
            if s.name == record.name and s.kind == record.kind:
                steps[i] = record
                break
        else:
            steps.append(record)
        return replace(self, steps=tuple(steps))

    def to_json(self) -> dict[str, Any]:
        return {
            "saga_id": self.saga_id,
            "name": self.name,
            "style": self.style,
            "state": self.state,
            "reason": self.reason,
            "started_at": _iso(self.started_at),
            "deadline_at": _iso(self.deadline_at),
            "updated_at": _iso(self.updated_at),
            "steps": [s.to_json() for s in self.steps if s.kind == "action"],
            "compensations": [s.to_json() for s in self.steps if s.kind == "compensation"],
        }


@dataclass
class SagaContext:
    """What a step sees: the saga's id and data (steps add to it), and its time: ``timeout`` is
    what this attempt may take (the step timeout, or less if the saga's deadline is nearer),
    to pass on as the downstream call's deadline."""

    saga_id: str
    data: dict[str, Any]
    deadline: datetime
    attempt: int = 1
    timeout: float = 5.0
    reason: str = ""  # while compensating: why
    produced: dict[str, Any] = field(default_factory=dict)  # what this step adds to the data


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def _time(text: str | None) -> datetime | None:
    return None if not text else datetime.fromisoformat(text.replace("Z", "+00:00"))


__all__ = ["TERMINAL", "Kind", "Outcome", "SagaContext", "SagaRecord", "State", "StepRecord", "Style"]
