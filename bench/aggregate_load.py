"""Loading an order aggregate at 10, 1,000 and 10,000 events, on SQLite and PostgreSQL.

Snapshots make the cost independent of the stream's length; the peer of each row is the same
load at 10 events (target: the 10k load takes <= 1.5x the 10-event load). A row without
snapshots shows what they buy.
"""

from __future__ import annotations

import statistics
import tempfile
import time

from bench.common import Figure, pg_schema, pg_url, print_figures, with_search_path
from ordermesh.clock import FakeClock
from ordermesh.eventstore import open_event_store
from ordermesh.eventstore.aggregate import Repository
from ordermesh.eventstore.port import EventStore
from ordermesh.services.orders.domain import OrderAggregate
from ordermesh.services.orders.events import OrderLine, codec

SIZES = (10, 1_000, 10_000)
LOADS = 200


async def _grow(repo: Repository[OrderAggregate], order_id: str, events: int, clock: FakeClock) -> None:
    order = OrderAggregate.create(
        order_id, "u1", "u1@example.com", "EUR", [OrderLine("A", 1, 100)], clock.now()
    )
    await repo.save(order)
    while order.version < events:
        for _ in range(min(500, events - order.version)):
            order.record_payment_failure("card declined", clock.now())
        await repo.save(order)


async def _time_loads(repo: Repository[OrderAggregate], order_id: str, loads: int) -> float:
    """Median microseconds per load."""
    samples = []
    for _ in range(loads):
        start = time.perf_counter()
        await repo.load(order_id)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


async def _measure(store: EventStore, backend: str) -> list[Figure]:
    clock = FakeClock()
    repo = Repository(store, OrderAggregate, codec, "order-", 100, clock)
    bare = Repository(store, OrderAggregate, codec, "bare-", 10**9, clock)  # never snapshots
    times: dict[int, float] = {}
    for size in SIZES:
        await _grow(repo, f"o{size}", size, clock)
        times[size] = await _time_loads(repo, f"o{size}", LOADS)
    await _grow(bare, "o10000", 10_000, clock)
    no_snapshots = await _time_loads(bare, "o10000", 20)
    figures = [
        Figure(
            f"{backend}: load at {size:,} events", times[size], times[10], "µs (median)", "load at 10 events"
        )
        for size in SIZES[1:]
    ]
    figures.append(
        Figure(f"{backend}: load at 10,000 events, no snapshots", no_snapshots, times[10], "µs", "load at 10")
    )
    return figures


async def run() -> list[Figure]:
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = await open_event_store(f"sqlite:///{tmp}/load.db")
        try:
            figures += await _measure(store, "SQLite")
        finally:
            await store.close()
    async with pg_schema("load") as schema:
        store = await open_event_store(with_search_path(pg_url(), schema))
        try:
            figures += await _measure(store, "PostgreSQL")
        finally:
            await store.close()
    print_figures("Aggregate load time (ratio = this load / the 10-event load; lower is better)", figures)
    return figures
