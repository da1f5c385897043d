"""``python -m bench [appends] [replay] [aggregate_load] [http_orders] [pagination] ...``: run the
named benchmarks (all when none is named).

``BENCH_LOOP=uvloop`` runs our side on uvloop (what ``uvicorn[standard]`` serves with) instead of
the stock asyncio loop; the peers are unaffected.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sqlite3
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from bench import (
    aggregate_load,
    appends,
    grpc_orders,
    http_orders,
    messaging,
    pagination,
    replay,
    resilience,
    sagas,
    tracing,
)
from bench.common import Figure
from ordermesh.tuning import describe, tune_gc

BENCHMARKS: dict[str, Callable[[], Coroutine[Any, Any, list[Figure]]]] = {
    "appends": appends.run,
    "replay": replay.run,
    "aggregate_load": aggregate_load.run,
    "http_orders": http_orders.run,
    "grpc_orders": grpc_orders.run,
    "messaging": messaging.run,
    "pagination": pagination.run,
    "sagas": sagas.run,
    "resilience": resilience.run,
    "tracing": tracing.run,
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
        return 2
    loop = os.environ.get("BENCH_LOOP", "asyncio")
    if loop not in {"asyncio", "uvloop"}:
        print(f"BENCH_LOOP must be asyncio or uvloop, not {loop!r}")
        return 2
    tune_gc()  # as every ordermesh process runs; it applies to the peers in this process too
    print(
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, "
        f"event loop: {loop}, {describe()}"
    )
    for name in names:
        started = time.perf_counter()
        if loop == "uvloop":
            import uvloop

            uvloop.run(BENCHMARKS[name]())
        else:
            asyncio.run(BENCHMARKS[name]())
        print(f"  ({name} took {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
