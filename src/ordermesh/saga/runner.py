"""The saga engine: runs a saga's steps, retries what may be retried, and compensates — every
move written to the saga log first, so a process killed at any point resumes where it was.

- A step's action is written as attempted *before* it runs: after a crash it is run again, which
  is why every step and compensation must be idempotent downstream (keyed by the saga id, the
  order id). That, not exactly-once delivery, is what makes a saga safe.
- A ``StepFailed`` (a business no: payment declined, stock short), or any ``DomainError`` or
  ``NotFound`` a downstream answers with, compensates at once. Any other error (a service down, a
  timeout) is retried with backoff until the saga's deadline; past it, the saga compensates.
- Compensations run last step first, for every step that was attempted (one that timed out may
  have taken effect), and are retried until they succeed: a saga never stops half-way. Only a
  compensation refused for good (a ``DomainError``) ends a saga ``failed``, for an operator.
- A step (or compensation) refused by an open circuit breaker (``CircuitOpen``) is parked: it
  waits, recorded as ``parked``, until the breaker lets a probe through, then runs again; a step
  parked past the saga's deadline compensates instead.
- Time is the injected clock's; a retry's wait is a durable wake-up time in the log, not a sleep a
  restart would forget (``run`` drives whatever is due).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from opentelemetry.trace import Span

from ordermesh import logs, tracing
from ordermesh.clock import Clock
from ordermesh.errors import DomainError, NotFound
from ordermesh.failpoints import failpoint
from ordermesh.resilience import CircuitOpen
from ordermesh.saga.model import SagaContext, SagaRecord, StepRecord, Style
from ordermesh.saga.store import SagaStore

log = logging.getLogger("ordermesh.saga")

Action = Callable[[SagaContext], Awaitable[str | None]]


def _traced(record: SagaRecord, step: Step, kind: str, attempt: int) -> AbstractContextManager[Span]:
    """Each step and compensation in a span of its own, a child of the trace that started the saga
    (``data["traceparent"]``), so what it calls and records (and the mail it causes) belongs to
    the order's one trace. Sagas are keyed by order id: the saga id is the order's too."""
    return tracing.span(
        f"saga {record.name} {step.name}" if kind == "action" else f"saga {record.name} undo {step.name}",
        parent=tracing.extract(record.data),
        attributes={
            tracing.SAGA_ID: record.saga_id,
            tracing.ORDER_ID: record.saga_id,
            "ordermesh.saga.step": step.name,
            "ordermesh.saga.kind": kind,
            "ordermesh.saga.attempt": attempt,
            "ordermesh.saga.service": step.service,
        },
    )


def _parked_for(exc: CircuitOpen) -> timedelta:
    """How long a step waits for an open breaker: until it lets a probe through (at least a
    moment, so a saga never spins)."""
    return timedelta(seconds=max(exc.retry_after, 0.05))


class StepFailed(DomainError):
    """A step's business answer is no: the saga compensates (no retry would change it)."""


@dataclass(frozen=True)
class Step:
    """One step: ``action`` does it (returns a detail to record, e.g. the payment id, and may add
    to ``ctx.produced``), ``compensation`` undoes it. Both idempotent by saga id."""

    name: str
    service: str
    action: Action
    compensation: Action | None = None


@dataclass(frozen=True)
class SagaDefinition:
    name: str
    steps: tuple[Step, ...]
    # Run once the compensations are done (the order is cancelled with the reason): retried
    # like a compensation, recorded as one named ``finish.name``.
    finish: Step | None = None


@dataclass(frozen=True)
class SagaPolicy:
    """Timeouts are data: per step and per saga, in seconds (ORDERMESH_SAGA_STEP_TIMEOUT and
    ORDERMESH_SAGA_DEADLINE)."""

    step_timeout: float = 5.0
    deadline: float = 60.0
    retry_initial: float = 0.2
    retry_max: float = 5.0

    def backoff(self, attempt: int) -> timedelta:
        return timedelta(seconds=min(self.retry_initial * 2 ** max(attempt - 1, 0), self.retry_max))


class SagaRunner:
    def __init__(
        self,
        store: SagaStore,
        definitions: Mapping[str, SagaDefinition],
        clock: Clock,
        policy: SagaPolicy | None = None,
        style: Style = "orchestrated",
    ) -> None:
        self.store = store
        self.definitions = dict(definitions)
        self.clock = clock
        self.policy = policy or SagaPolicy()
        self.style = style
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # per saga: one driver at a time
        self._kick = asyncio.Event()

    async def start(self, saga_id: str, name: str, data: dict[str, Any]) -> SagaRecord:
        """Record a new saga (or find the one already started with that id) and drive it."""
        return await self.drive((await self.begin(saga_id, name, data)).saga_id)

    async def begin(self, saga_id: str, name: str, data: dict[str, Any]) -> SagaRecord:
        """Record a new saga (or find the one already started with that id) for ``run`` to drive."""
        now = self.clock.now()
        record = await self.store.create(
            SagaRecord(
                saga_id=saga_id,
                name=name,
                style=self.style,
                state="running",
                data=data,
                started_at=now,
                deadline_at=now + timedelta(seconds=self.policy.deadline),
                updated_at=now,
            )
        )
        self.kick()
        return record

    async def drive(self, saga_id: str) -> SagaRecord:
        """Move the saga as far as it goes now: to its end, or to a wait (a retry's wake-up)."""
        lock, users = self._locks.get(saga_id, (asyncio.Lock(), 0))
        self._locks[saga_id] = (lock, users + 1)
        try:
            async with lock:
                record = await self.store.get(saga_id)
                if record is None:
                    raise KeyError(saga_id)
                while not record.terminal:
                    if record.wake_at is not None and record.wake_at > self.clock.now():
                        return record  # waiting: ``run`` drives it again when it is due
                    with logs.bind(saga_id=saga_id, order_id=saga_id):  # sagas are keyed by order id
                        moved = await self._advance(record)
                    if moved is None:  # another driver wrote first: carry on from what it wrote
                        reread = await self.store.get(saga_id)
                        assert reread is not None
                        moved = reread
                    record = moved
                return record
        finally:
            lock, users = self._locks[saga_id]
            if users == 1:
                del self._locks[saga_id]
            else:
                self._locks[saga_id] = (lock, users - 1)

    async def _advance(self, record: SagaRecord) -> SagaRecord | None:
        definition = self.definitions[record.name]
        if record.state == "running":
            if record.position >= len(definition.steps):
                return await self._save(replace(record, state="completed", wake_at=None))
            return await self._run_action(record, definition.steps[record.position])
        return await self._compensate(record, definition)

    async def _run_action(self, record: SagaRecord, step: Step) -> SagaRecord | None:
        now = self.clock.now()
        if now >= record.deadline_at:
            return await self._begin_compensation(record, f"the saga's deadline passed during {step.name}")
        previous = record.step(step.name)
        attempt = (previous.attempts if previous else 0) + 1
        attempted = StepRecord(
            step.name,
            step.service,
            outcome="running",
            attempts=attempt,
            started_at=previous.started_at if previous and previous.started_at else now,
        )
        # Written before the call: after a crash the step is known to be in flight and is re-sent.
        saved = await self._save(record.with_step(attempted))
        if saved is None:
            return None
        remaining = (saved.deadline_at - now).total_seconds()
        budget = min(self.policy.step_timeout, max(remaining, 0.001))
        ctx = SagaContext(saved.saga_id, dict(saved.data), saved.deadline_at, attempt, budget)
        try:
            with _traced(saved, step, "action", attempt):
                detail = await asyncio.wait_for(step.action(ctx), budget)
        except (DomainError, NotFound) as exc:  # StepFailed, or a downstream's own refusal
            done = replace(attempted, outcome="failed", ended_at=self.clock.now(), detail=str(exc))
            # A StepFailed speaks for itself; a downstream's own refusal is named after its step.
            reason = str(exc) if isinstance(exc, StepFailed) else f"{step.name}: {exc}"
            return await self._begin_compensation(saved.with_step(done), reason)
        except CircuitOpen as exc:  # the downstream is known down: wait for its breaker, quietly
            wake = self.clock.now() + _parked_for(exc)
            parked = replace(attempted, outcome="parked", detail=f"waiting: {exc}")
            if wake >= saved.deadline_at:
                return await self._begin_compensation(
                    saved.with_step(parked),
                    f"{step.name}: {exc.downstream} stayed unavailable past the saga's deadline",
                )
            return await self._save(replace(saved.with_step(parked), wake_at=wake))
        except Exception as exc:  # anything else (a service down, a timeout, a bug) is retried
            why = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, TimeoutError):
                log.warning("saga %s: %s attempt %d failed: %s", saved.saga_id, step.name, attempt, why)
            wake = self.clock.now() + self.policy.backoff(attempt)
            retrying = replace(attempted, outcome="retrying", detail=why)
            if wake >= saved.deadline_at:
                return await self._begin_compensation(
                    saved.with_step(retrying),
                    f"{step.name} did not succeed before the saga's deadline ({why})",
                )
            return await self._save(replace(saved.with_step(retrying), wake_at=wake))
        # The step acted downstream, and the log does not say so yet: a crash here is the one a
        # re-sent step must survive (tests arm it as saga.after.<step>).
        await failpoint(f"saga.after.{step.name}")
        done = replace(attempted, outcome="succeeded", ended_at=self.clock.now(), detail=detail or "")
        data = {**saved.data, **ctx.produced}
        return await self._save(
            replace(saved.with_step(done), data=data, position=saved.position + 1, wake_at=None)
        )

    async def _begin_compensation(self, record: SagaRecord, reason: str) -> SagaRecord | None:
        log.info("saga %s: compensating: %s", record.saga_id, reason)
        return await self._save(replace(record, state="compensating", reason=reason, wake_at=None))

    def _next_compensation(self, record: SagaRecord, definition: SagaDefinition) -> Step | None:
        # Last step first; every step that was attempted (one that timed out may have acted).
        for step in reversed(definition.steps):
            action = record.step(step.name)
            if step.compensation is None or action is None or action.attempts == 0:
                continue
            if action.outcome == "failed":
                continue  # a business no: it did nothing to undo
            undone = record.step(step.name, "compensation")
            if undone is None or undone.outcome != "succeeded":
                return step
        finish = definition.finish
        if finish is not None:
            done = record.step(finish.name, "compensation")
            if done is None or done.outcome != "succeeded":
                return finish
        return None

    async def _compensate(self, record: SagaRecord, definition: SagaDefinition) -> SagaRecord | None:
        step = self._next_compensation(record, definition)
        if step is None:
            return await self._save(replace(record, state="compensated", wake_at=None))
        undo = step.action if step is definition.finish else step.compensation
        assert undo is not None
        now = self.clock.now()
        previous = record.step(step.name, "compensation")
        attempt = (previous.attempts if previous else 0) + 1
        attempted = StepRecord(
            step.name,
            step.service,
            kind="compensation",
            outcome="running",
            attempts=attempt,
            started_at=previous.started_at if previous and previous.started_at else now,
        )
        saved = await self._save(record.with_step(attempted))
        if saved is None:
            return None
        ctx = SagaContext(
            saved.saga_id,
            dict(saved.data),
            saved.deadline_at,
            attempt,
            self.policy.step_timeout,
            saved.reason,
        )
        try:
            with _traced(saved, step, "compensation", attempt):
                detail = await asyncio.wait_for(undo(ctx), self.policy.step_timeout)
        except DomainError as exc:
            failed = replace(attempted, outcome="failed", ended_at=self.clock.now(), detail=str(exc))
            log.error("saga %s: compensation %s refused: %s", saved.saga_id, step.name, exc)
            return await self._save(
                replace(saved.with_step(failed), state="failed", reason=f"{saved.reason}; {step.name}: {exc}")
            )
        except CircuitOpen as exc:  # waits for the breaker, however long: a saga never stops half-way
            parked = replace(attempted, outcome="parked", detail=f"waiting: {exc}")
            return await self._save(replace(saved.with_step(parked), wake_at=now + _parked_for(exc)))
        except Exception as exc:  # retried until it succeeds
            why = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            log.warning(
                "saga %s: compensation %s attempt %d failed: %s", saved.saga_id, step.name, attempt, why
            )
            retrying = replace(attempted, outcome="retrying", detail=why)
            return await self._save(
                replace(saved.with_step(retrying), wake_at=now + self.policy.backoff(attempt))
            )
        done = replace(attempted, outcome="succeeded", ended_at=self.clock.now(), detail=detail or "")
        return await self._save(replace(saved.with_step(done), wake_at=None))

    async def _save(self, record: SagaRecord) -> SagaRecord | None:
        return await self.store.save(replace(record, updated_at=self.clock.now()))

    def kick(self) -> None:
        """Something may be due now (a saga started elsewhere): ``run`` looks at once."""
        self._kick.set()

    async def run(self, stop: asyncio.Event, poll: float = 0.2, concurrency: int = 64) -> None:
        """Drive every due saga until ``stop``: at start (resuming what a crash interrupted),
        then whenever a wake-up time comes (polled every ``poll`` seconds) or ``kick`` is called."""
        running: set[asyncio.Task[Any]] = set()
        gate = asyncio.Semaphore(concurrency)

        async def one(saga_id: str) -> None:
            async with gate:
                try:
                    await self.drive(saga_id)
                except Exception:  # a store outage: the saga stays due and is tried again
                    log.exception("saga %s: could not be driven", saga_id)

        while not stop.is_set():
            try:
                busy = {t.get_name() for t in running}
                for saga_id in await self.store.due(self.clock.now()):
                    if saga_id not in busy:
                        task = asyncio.create_task(one(saga_id), name=saga_id)
                        running.add(task)
                        task.add_done_callback(running.discard)
            except Exception:
                log.exception("saga runner: the saga log could not be read")
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), poll)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


__all__ = ["SagaDefinition", "SagaPolicy", "SagaRunner", "Step", "StepFailed"]
