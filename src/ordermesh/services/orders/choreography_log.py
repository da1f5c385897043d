"""The order service's saga log under choreography: pure transitions of a ``SagaRecord`` as the
events arrive (record in, record out, no I/O); ``choreography`` reads and writes the records.

The log is the orchestrator's (style ``choreographed``; steps payment, stock, shipment, commit;
compensations payment, stock, shipment, last first, then cancel), so ``GET
/api/orders/{id}/saga`` and ``ordermesh saga show`` read both styles alike.

It is derived from the order as much as from the event: a change first writes what the order shows
(``follow_order``: paid, reserved, shipped), then what the event adds (a failure, an undo), then
the order's cancellation (``end_as_order``). So events that overtake one another, a handler killed
half-way or a cancel by a user all end in the same record, and a step already succeeded is left
alone (a redelivery changes nothing twice).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from ordermesh.saga import SagaRecord, StepRecord
from ordermesh.services.orders.domain import OrderAggregate

STEPS = {"payment": "payments", "stock": "inventory", "shipment": "shipping", "commit": "inventory"}
NAMES = tuple(STEPS)
UNDOABLE = ("payment", "stock", "shipment")  # a commit is never undone: the order shipped


def step_done(record: SagaRecord, name: str, detail: str, now: datetime) -> SagaRecord:
    """``name`` succeeded; the next step is under way (or the saga completed). While compensating,
    a late success is something more to undo."""
    step = record.step(name)
    if step is not None and step.outcome == "succeeded":
        return record
    done = StepRecord(
        name,
        STEPS[name],
        outcome="succeeded",
        attempts=max(step.attempts if step else 0, 1),
        started_at=step.started_at if step and step.started_at else now,
        ended_at=now,
        detail=detail,
    )
    record = record.with_step(done)
    if record.state == "compensating" and name in UNDOABLE:
        return expect_undo(record, name, now)
    if record.state != "running":
        return record  # terminal: recorded for the operator, nothing moves
    after = NAMES.index(name) + 1
    record = replace(record, position=max(record.position, after))
    if after == len(NAMES):
        return replace(record, state="completed", wake_at=None)
    if record.step(NAMES[after]) is None:
        record = record.with_step(StepRecord(NAMES[after], STEPS[NAMES[after]], attempts=1, started_at=now))
    return record


def step_failed(record: SagaRecord, name: str, reason: str, now: datetime) -> SagaRecord:
    step = record.step(name)
    if step is not None and step.outcome == "failed" and step.detail == reason:
        return record
    started = step.started_at if step and step.started_at else now
    attempts = max(step.attempts if step else 0, 1)
    failed = StepRecord(name, STEPS[name], "action", "failed", attempts, started, now, reason)
    return begin_compensation(record.with_step(failed), reason, now)


def begin_compensation(record: SagaRecord, reason: str, now: datetime) -> SagaRecord:
    """Compensating: what was confirmed done waits for its undo, last first; a step still under
    way ends with no answer (its service undoes it, if it ever acts, on ``order.cancelled``)."""
    if record.state != "running":
        return record
    for step in record.steps:
        if step.kind == "action" and step.outcome in ("running", "retrying"):
            unanswered = "no answer before the saga was cancelled"
            record = record.with_step(replace(step, outcome="failed", ended_at=now, detail=unanswered))
    record = replace(record, state="compensating", reason=reason)
    for name in reversed(UNDOABLE):
        done = record.step(name)
        if done is not None and done.outcome == "succeeded":
            record = expect_undo(record, name, now)
    return record


def expect_undo(record: SagaRecord, name: str, now: datetime) -> SagaRecord:
    if record.step(name, "compensation") is not None:
        return record
    return record.with_step(StepRecord(name, STEPS[name], "compensation", "running", 1, now))


def undone(record: SagaRecord, name: str, detail: str, now: datetime) -> SagaRecord:
    """The undo of ``name`` was seen; once nothing is outstanding the saga is compensated."""
    undo = record.step(name, "compensation")
    if undo is None or undo.outcome != "succeeded":
        started = undo.started_at if undo and undo.started_at else now
        record = record.with_step(
            StepRecord(name, STEPS[name], "compensation", "succeeded", 1, started, now, detail)
        )
    return settle(record)


def cancelled(record: SagaRecord, reason: str, now: datetime) -> SagaRecord:
    """The order was cancelled with ``reason``: the finishing compensation, as the orchestrator's."""
    record = begin_compensation(record, reason, now)
    if record.step("cancel", "compensation") is None:
        record = record.with_step(
            StepRecord("cancel", "orders", "compensation", "succeeded", 1, now, now, reason)
        )
    return settle(record)


def settle(record: SagaRecord) -> SagaRecord:
    undos = [s for s in record.steps if s.kind == "compensation"]
    finished = record.step("cancel", "compensation") is not None
    if record.state == "compensating" and finished and all(s.outcome == "succeeded" for s in undos):
        return replace(record, state="compensated", wake_at=None)
    return record


def follow_order(record: SagaRecord, order: OrderAggregate, now: datetime) -> SagaRecord:
    """What the order shows, in the log: the first half of every change (the event's part goes
    between this and ``end_as_order``)."""
    if order.payment_id is not None:
        record = step_done(record, "payment", order.payment_id, now)
    if order.reservation_id is not None:
        record = step_done(record, "stock", order.reservation_id, now)
    if order.tracking_id is not None:
        record = step_done(record, "shipment", order.tracking_id, now)
        record = replace(record, data={**record.data, "tracking_id": order.tracking_id})
    return record


def end_as_order(record: SagaRecord, order: OrderAggregate, now: datetime) -> SagaRecord:
    if order.status == "cancelled":
        record = cancelled(record, order.cancel_reason or "cancelled", now)
    return record


def order_data(order: OrderAggregate) -> dict[str, Any]:
    items = [{"sku": line.sku, "quantity": line.quantity} for line in order.items]
    return {"total": order.total, "currency": order.currency, "items": items}


__all__ = [
    "NAMES",
    "STEPS",
    "UNDOABLE",
    "begin_compensation",
    "cancelled",
    "end_as_order",
    "expect_undo",
    "follow_order",
    "order_data",
    "settle",
    "step_done",
    "step_failed",
    "undone",
]
