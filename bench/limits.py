"""Live-stream costs (issue 10): what 1,000 idle order feeds cost, and what a replay from 0 keeps.

``python -m bench.limits idle [STREAMS]``: STREAMS (default 1000) ``OrderFeed``s (the feed behind
``StreamOrderUpdates``) wait on an order store in a SQLite file with nothing happening; the
figure is the process's CPU time over 5 s, as a share of one core.

``python -m bench.limits replay [ORDERS]``: ORDERS (default 50000) orders of other users and 500 of
the reader's in a SQLite file; one feed replays from position 0 to the head. Figures: the
Python heap the feed holds at the head (tracemalloc), its peak, what is left once the stream
ended, and the process RSS before, at the head and after.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.runtime import build_order_system
from ordermesh.services.orders.updates import OrderFeed

LINES = [OrderLine("SKU-1", 1, 100)]
IDLE_SECONDS = 5.0


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def idle(streams: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        system = await build_order_system(f"sqlite:///{folder}/orders.db")
        await system.start()
        feed = OrderFeed(system.service, asyncio.Event())

        async def follow(user: str) -> None:
            async with aclosing(feed.updates(user, user_id=user)) as updates:
                async for _ in updates:
                    pass

        tasks = [asyncio.create_task(follow(f"user-{i}")) for i in range(streams)]
        await asyncio.sleep(1.0)  # every feed has read the (empty) head and is waiting
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.sleep(IDLE_SECONDS)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await system.close()
    print(f"{streams} idle streams: {cpu / wall:.1%} of a core ({cpu:.2f} s CPU in {wall:.1f} s)")


async def _fill(system: Any, orders: int) -> None:
    service = system.service
    for i in range(orders):
        user = "reader" if i % (orders // 500 or 1) == 0 else f"user-{i}"
        await service.create_order(user, "a@example.com", "EUR", LINES)


async def replay(orders: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        system = await build_order_system(f"sqlite:///{folder}/orders.db")
        await _fill(system, orders)
        head = await system.store.head_position()
        feed = OrderFeed(system.service, asyncio.Event())
        gc.collect()
        rss_before = rss_mb()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        seen = 0
        updates: AsyncIterator[Any] = feed.updates("reader", user_id="reader")
        async with aclosing(updates):
            async for event, _ in updates:
                seen += 1
                if event.position >= head - 1 or seen >= 500:
                    break
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - base
            rss_head = rss_mb()
        gc.collect()
        after, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss_after = rss_mb()
        await system.close()
    mb = 1024 * 1024
    print(
        f"replay of {orders} orders ({seen} the reader's): held at the head {held / mb:.1f} MB, "
        f"peak {(peak - base) / mb:.1f} MB, left after the end {(after - base) / mb:.2f} MB; "
        f"RSS {rss_before:.0f} -> {rss_head:.0f} -> {rss_after:.0f} MB"
    )


def main(argv: list[str]) -> None:
    what = argv[0] if argv else "idle"
    count = int(argv[1]) if len(argv) > 1 else None
    if what == "idle":
        asyncio.run(idle(count or 1000), debug=False)
    elif what == "replay":
        asyncio.run(replay(count or 50_000), debug=False)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
