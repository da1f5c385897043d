"""Creating an order under an Idempotency-Key, shared by REST and gRPC.

The saved outcome is transport-neutral (the order's JSON, or an error record: see
``ordermesh.idempotency``), so a key used over REST and retried over gRPC (or the other way round)
replays the same outcome, each transport answering it its own way.
Server-side failures are not saved: the key is released and a retry runs afresh.

Crash safety (issue 10). The key's row and the order's events are written in separate steps
(claim, append, complete): a process killed between the append and the completion left a claim
that lapsed after 60 s, and the retry then made a second order. Rather than one transaction over
the key table and the event store (possible on SQLite and PostgreSQL, where they share a database,
but not for the memory backend, and still trusting the key row to survive), the order carries
its key, and the key row becomes a cache of what the event store already decides:

- a keyed order's id is derived from (user, key, generation) (:func:`keyed_order_id`, UUIDv5), so
  a retry appends to the SAME stream with expected version 0 and meets ``ConcurrencyConflict``: it
  can never make a second order (nor a second ``order.created`` message), whatever became of the
  key row (in flight, released, lost);
- ``OrderCreated``'s metadata records the user, the key and the request's fingerprint
  (:data:`METADATA_KEY`), so the outcome is rebuilt from the order as it was at version 1 (what the
  first request answered), and another request under the key is still ``IdempotencyKeyReused``;
- a retry that finds the key in flight looks for that order first: once committed it IS the
  outcome (the first request can no longer fail), so recovery is immediate, not after the lapse;
- keys are kept for ``KEEP`` (24 h): a key reused once its order is older makes a new order,
  under the next generation (0, 1, ...; each earlier, expired use costs the reuse one look-up).
  A key's age is its order's: a retry just after the key row expired, while the order is not
  yet 24 h old, still replays that order (or is ``IdempotencyKeyReused`` with another body).

Metadata rather than an ``OrderCreated`` field: the key belongs to the request, not the order, so
it stays out of the event history clients read and the messages published, with no new schema
version. Orders made without a key keep random ids (UUIDv4), which no derived id (v5) can equal.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ordermesh.errors import ConcurrencyConflict, IdempotencyError, IdempotencyKeyInUse, OrdermeshError
from ordermesh.eventstore.model import StoredEvent
from ordermesh.failpoints import failpoint
from ordermesh.idempotency import KEEP, SavedOutcome, check_fingerprint, is_refusal
from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.runtime import OrderSystem
from ordermesh.services.orders.service import READ_YOUR_WRITES_TIMEOUT

# Fixed for good: another namespace would give a retry another id, hence a second order.
_NAMESPACE = uuid.UUID("9d07bd17-cd44-4695-af00-e721c4a30e55")
METADATA_KEY = "idempotency"
AFTER_APPEND = "orders.after_append"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The new order's JSON (``order``), or the refusal (``error``); ``replayed`` when saved."""

    order: bytes | None
    error: OrdermeshError | None
    replayed: bool

    @classmethod
    def of(cls, saved: SavedOutcome, replayed: bool) -> Outcome:
        if saved.kind == "ok":
            return cls(saved.body, None, replayed)
        return cls(None, saved.error(), replayed)


def fingerprint(user_email: str, currency: str, items: Sequence[OrderLine]) -> str:
    request = {
        "user_email": user_email,
        "currency": currency,
        "items": [{"sku": i.sku, "quantity": i.quantity, "unit_price": i.unit_price} for i in items],
    }
    try:
        raw = orjson.dumps(request, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        # An integer past 64 bits (orjson's limit): the domain refuses the order (422), and its
        # key still needs a print to remember that outcome by. The same input always lands here.
        raw = json.dumps(request, sort_keys=True).encode()
    return hashlib.sha256(raw).hexdigest()


def keyed_order_id(scope: str, key: str, generation: int = 0) -> str:
    """The id of the order made under ``key`` by ``scope`` (the user), in its ``generation``th use."""
    # A JSON array keeps the parts apart whatever characters they hold.
    return str(uuid.uuid5(_NAMESPACE, orjson.dumps([scope, key, generation]).decode()))


async def create_order_outcome(
    system: OrderSystem,
    user: str,
    user_email: str,
    currency: str,
    items: Sequence[OrderLine],
    key: str | None,
) -> Outcome:
    """The order, or the (saved) refusal; raises only what must not be saved."""
    if key is None:
        order = await system.service.create_order(user, user_email, currency, items)
        return Outcome(orjson.dumps(order), None, False)
    print_ = fingerprint(user_email, currency, items)
    try:
        saved = await system.idempotency.begin(user, key, print_)
    except IdempotencyKeyInUse:
        _, found = await _live_order(system, user, key, print_)
        if found is None:
            raise
        return Outcome(found, None, True)
    if saved is not None:
        return Outcome.of(saved, True)
    replayed = False
    try:
        body, replayed = await _create_keyed(system, user, user_email, currency, items, key, print_)
        saved = SavedOutcome.ok(body)
    except OrdermeshError as exc:
        # A key misused (found so on the order itself) is not this key row's outcome to keep.
        if not is_refusal(exc) or isinstance(exc, IdempotencyError):
            await system.idempotency.release(user, key)
            raise
        saved = SavedOutcome.refused(exc)
    except BaseException:
        await system.idempotency.release(user, key)
        raise
    if saved.kind == "ok":
        await failpoint(AFTER_APPEND)  # tests: a crash between the committed order and the key
    await system.idempotency.complete(user, key, saved)
    return Outcome.of(saved, replayed)


async def _create_keyed(
    system: OrderSystem,
    user: str,
    user_email: str,
    currency: str,
    items: Sequence[OrderLine],
    key: str,
    print_: str,
) -> tuple[bytes, bool]:
    """The new order's JSON, or the key's existing order's (then ``True``: a replay)."""
    generation = 0
    recorded = {METADATA_KEY: {"scope": user, "key": key, "fingerprint": print_}}
    while True:
        order_id = keyed_order_id(user, key, generation)
        try:
            order = await system.service.create_order(
                user, user_email, currency, items, order_id=order_id, metadata=recorded
            )
            return orjson.dumps(order), False
        except ConcurrencyConflict:
            generation, found = await _live_order(system, user, key, print_, generation)
            if found is not None:
                return found, True
            # else ``generation`` is the first free one: try it (a racing writer sends us back here)


async def _live_order(
    system: OrderSystem, user: str, key: str, print_: str, generation: int = 0
) -> tuple[int, bytes | None]:
    """(its generation, the saved outcome) of the key's order younger than ``KEEP``, or
    (the first free generation, None); ``IdempotencyKeyReused`` when made by another request."""
    now = system.service.clock.now()
    while True:
        order_id = keyed_order_id(user, key, generation)
        first = await _first_event(system, order_id)
        if first is None:
            return generation, None
        if now - first.occurred_at < KEEP:
            check_fingerprint(_recorded_fingerprint(first, user, key), print_, key)
            return generation, await _as_created(system, order_id, first.position)
        generation += 1


async def _first_event(system: OrderSystem, order_id: str) -> StoredEvent | None:
    events = await system.store.read_stream(system.service.repository.stream_id(order_id), 1, 1)
    return events[0] if events else None


def _recorded_fingerprint(event: StoredEvent, user: str, key: str) -> str:
    recorded: Any = event.metadata.get(METADATA_KEY)
    if isinstance(recorded, dict) and recorded.get("scope") == user and recorded.get("key") == key:
        return str(recorded.get("fingerprint"))
    return ""  # not made under this key: matches no request


async def _as_created(system: OrderSystem, order_id: str, position: int) -> bytes:
    """The order as its creation answered it, once the read models show it (read your writes)."""
    order = await system.service.get_order_at(order_id, None, version=1)
    for projector in system.projectors:
        await projector.wait_until(position, READ_YOUR_WRITES_TIMEOUT)
    return orjson.dumps(order)
