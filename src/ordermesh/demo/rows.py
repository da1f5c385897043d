"""The demo's orders: the mix it places, one row per order, and what each row's end means.

A ``Row`` is what the live table shows and what the summary counts; ``outcome`` classifies its
end (shipped, cancelled for a known reason, parked, or other), and ``current_step`` reads the
step a saga is at from its saga view.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Any

TERMINAL = ("shipped", "cancelled")
# "parked": still pending, its saga waiting for a downstream whose circuit breaker is open (it
# resumes when that downstream recovers); "cancelled-unavailable": a downstream stayed down past
# the saga's deadline, so what was done was undone.
OUTCOMES = (
    "shipped",
    "cancelled-declined",
    "cancelled-out-of-stock",
    "cancelled-unavailable",
    "parked",
    "other",
)
ORDERS_PER_USER = 20  # well under the per-user write burst, so no order meets 429
OUT_OF_STOCK_UNITS = 10_000  # the most one line may ask for; the demo catalog holds 1,000 a SKU


@dataclass
class Row:
    """One demo order as the terminal shows it."""

    intent: str  # "ship", "decline" or "short": what the demo meant to happen
    user: str
    items: list[dict[str, Any]]
    order_id: str = ""
    total: int = 0
    currency: str = "EUR"
    status: str = "placing"
    step: str = ""
    reason: str = ""
    started: float = 0.0
    latency: float | None = None  # seconds from the create call to the terminal state being seen
    error: str = ""
    parked: bool = False  # its saga waits for an open circuit breaker

    @property
    def done(self) -> bool:
        return self.status in TERMINAL or bool(self.error)

    @property
    def outcome(self) -> str:
        if self.status == "shipped":
            return "shipped"
        if self.status == "cancelled" and self.reason:
            text = self.reason.lower()
            if "declin" in text:
                return "cancelled-declined"
            if "stock" in text:
                return "cancelled-out-of-stock"
            if "unavailable" in text or "deadline" in text:
                return "cancelled-unavailable"
        if not self.done and self.parked:
            return "parked"
        return "other"


def _line(sku: str, quantity: int, unit_price: int) -> dict[str, Any]:
    return {"sku": sku, "quantity": quantity, "unit_price": unit_price}


def plan(count: int, payment_limit: int, seed: int | None = None) -> list[Row]:
    """``count`` orders: of every six, four to ship, one declined, one out of stock."""
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:6]
    # A few users, each with few enough orders to stay under the per-user write burst.
    users = [f"demo-{tag}-{n}" for n in range(max(min(count, 3), -(-count // ORDERS_PER_USER)))]
    rows: list[Row] = []
    for n in range(count):
        sku = f"SKU-{rng.randint(1, 9)}"
        kind = ("ship", "ship", "ship", "ship", "decline", "short")[n % 6]
        if kind == "ship":
            skus = rng.sample(range(1, 10), rng.randint(1, 2))
            items = [_line(f"SKU-{s}", rng.randint(1, 3), rng.randint(100, 5000)) for s in skus]
        elif kind == "decline":
            items = [_line(sku, 1, payment_limit + 1)]
        else:
            items = [_line(sku, OUT_OF_STOCK_UNITS, 1)]
        rows.append(Row(kind, users[n % len(users)], items))
    return rows


def current_step(saga: dict[str, Any]) -> str:
    """The step the saga is at: the one still running, else the last one that moved."""
    actions = saga.get("steps", [])
    done = {a["name"] for a in actions}
    # Compensating an action is undoing it; the others (the final "cancel") are steps of their own.
    undos = [
        dict(c, name=f"undo {c['name']}" if c["name"] in done else c["name"])
        for c in saga.get("compensations", [])
    ]
    moves = [*actions, *undos]
    for step in moves:
        if step["outcome"] in ("running", "retrying", "parked"):
            return f"{step['name']} ({step['outcome']})"
    return f"{moves[-1]['name']} ({moves[-1]['outcome']})" if moves else ""
