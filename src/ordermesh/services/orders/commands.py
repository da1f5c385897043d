"""Creating an order under an Idempotency-Key, shared by REST and gRPC.

The saved outcome is transport-neutral (the order's JSON, or an error record: see
``ordermesh.idempotency``), so a key used over REST and retried over gRPC (or the other way round)
replays the same outcome, each transport answering it its own way.
Server-side failures are not saved: the key is released and a retry runs afresh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from ordermesh.errors import IdempotencyError, OrdermeshError
from ordermesh.idempotency import SavedOutcome, is_refusal
from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.runtime import OrderSystem


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
    return hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)).hexdigest()


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
    saved = await system.idempotency.begin(user, key, fingerprint(user_email, currency, items))
    if saved is not None:
        return Outcome.of(saved, True)
    try:
        order = await system.service.create_order(user, user_email, currency, items)
        saved = SavedOutcome.ok(orjson.dumps(order))
    except IdempotencyError:
        raise
    except OrdermeshError as exc:
        if not is_refusal(exc):
            await system.idempotency.release(user, key)
            raise
        saved = SavedOutcome.refused(exc)
    except BaseException:
        await system.idempotency.release(user, key)
        raise
    await system.idempotency.complete(user, key, saved)
    return Outcome.of(saved, False)
