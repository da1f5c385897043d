"""Creating an order and reading the first page of a user's orders, for a user with 10,000 orders
against one with 10, on SQLite and PostgreSQL (target: <= 1.2x).

The order service runs in this process as it does in its own (``build_order_system``, projectors
following the store in the background), so a create is timed until its own order is in both
read models (read-your-writes), as ``POST /api/orders`` answers. The users' histories are seeded
through the repository and projected once at the end (through the service, every create waits for
the projections). Both users' calls alternate, so drift on a noisy machine hits both alike. Pages
are ``PAGE`` orders for both users, so the two read the same number of rows.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable

from bench.common import Figure, pg_schema, pg_url, print_figures, with_search_path
from ordermesh.services.orders.domain import OrderAggregate
from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.runtime import OrderSystem, build_order_system

SMALL, BIG = 10, 10_000
CREATES = 200  # per user
READS = 1_000  # per user
PAGE = 10
LINES = [OrderLine("SKU-1", 2, 1250), OrderLine("SKU-X", 1, 99)]


async def _seed(system: OrderSystem, user: str, orders: int) -> None:
    service, repo = system.service, system.service.repository
    for i in range(orders):
        order = OrderAggregate.create(
            f"{user}-{i:06d}", user, f"{user}@example.com", "EUR", LINES, service.clock.now()
        )
        await repo.save(order)


async def _medians(calls: dict[str, Callable[[], Awaitable[object]]], rounds: int) -> dict[str, float]:
    """Median microseconds per call of each, alternating between them."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            await call()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) * 1e6 for name, s in samples.items()}


async def _measure(url: str, backend: str) -> list[Figure]:
    system = await build_order_system(url)
    try:
        await _seed(system, "small", SMALL)
        await _seed(system, "big", BIG)
        await system.start()  # catches the read models up, then follows the store
        service = system.service

        def create(user: str) -> Callable[[], Awaitable[object]]:
            return lambda: service.create_order(user, f"{user}@example.com", "EUR", LINES)

        def page(user: str) -> Callable[[], Awaitable[object]]:
            return lambda: service.user_orders_json(user, user, PAGE)

        await _medians({"small": create("small"), "big": create("big")}, 20)  # warm-up
        creates = await _medians({"small": create("small"), "big": create("big")}, CREATES)
        reads = await _medians({"small": page("small"), "big": page("big")}, READS)
    finally:
        await system.close()
    peer = f"user with {SMALL} orders"
    return [
        Figure(
            f"{backend}: create order, user with {BIG:,} orders", creates["big"], creates["small"], "µs", peer
        ),
        Figure(
            f"{backend}: first page ({PAGE} orders), user with {BIG:,}",
            reads["big"],
            reads["small"],
            "µs",
            peer,
        ),
    ]


async def run() -> list[Figure]:
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as tmp:
        figures += await _measure(f"sqlite:///{tmp}/pages.db", "SQLite")
    async with pg_schema("pages") as schema:
        figures += await _measure(with_search_path(pg_url(), schema), "PostgreSQL")
    print_figures(
        "Cost against history (median µs; ratio = 10,000-order user / 10-order user; <= 1.2x)", figures
    )
    return figures
