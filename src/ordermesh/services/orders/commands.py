"""Creating an order under an Idempotency-Key, shared by REST and gRPC.

The saved outcome is HTTP-shaped (status + body: the order, or a problem document), so a key
used over REST and retried over gRPC (or the other way round) replays the same outcome.
Server-side failures are not saved: the key is released and a retry runs afresh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from ordermesh.errors import IdempotencyError, OrdermeshError
from ordermesh.http.idempotency import SavedResponse
from ordermesh.http.problems import error_response
from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.runtime import OrderSystem


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int
    body: bytes
    replayed: bool


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
    """201 and the order, or the (saved) refusal; raises only what must not be saved."""
    if key is None:
        order = await system.service.create_order(user, user_email, currency, items)
        return Outcome(201, orjson.dumps(order), False)
    saved = await system.idempotency.begin(user, key, fingerprint(user_email, currency, items))
    if saved is not None:
        return Outcome(saved.status, saved.body, True)
    try:
        order = await system.service.create_order(user, user_email, currency, items)
        outcome = Outcome(201, orjson.dumps(order), False)
    except IdempotencyError:
        raise
    except OrdermeshError as exc:
        refusal = error_response(exc)
        if refusal.status_code >= 500:
            await system.idempotency.release(user, key)
            raise
        outcome = Outcome(refusal.status_code, bytes(refusal.body), False)
    except BaseException:
        await system.idempotency.release(user, key)
        raise
    await system.idempotency.complete(user, key, SavedResponse(outcome.status, outcome.body))
    return outcome
