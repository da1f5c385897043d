"""Process tuning that ordermesh's own processes apply at start (``ordermesh up``, the
notification service, the CLI's rebuilds) and the benchmarks apply to every side they measure.

The cyclic garbage collector's youngest generation is collected after 700 net container
allocations by default. A replay allocates four containers per event (the driver's record, the
event, its data and metadata dicts), so at 500k events/s that is ~3,000 collections a second:
measured, 12% of a replay's CPU went to ``gc_collect_main``. A threshold of 10,000 took replay
from ~460k to ~530k events/s here (2,000: ~490k; 20,000 and more: no better, then worse as the
young generation outgrows the CPU caches). Older generations keep their defaults, and objects
that exist after start-up (modules, apps, settings) are frozen out of every collection.

The services' long-running processes run on uvloop when it is installed (``serve``; it comes
with ``uvicorn[standard]``): the notification service on the same loop ``ordermesh up`` serves
REST and gRPC on, rather than a different one per process.

Embedding ordermesh in your own process? Nothing here runs unless you call ``tune_gc()``.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

GEN0_THRESHOLD = 10_000


def tune_gc() -> None:
    gen0, gen1, gen2 = gc.get_threshold()
    if 0 < gen0 < GEN0_THRESHOLD:  # 0 means someone disabled collection on purpose: leave it
        gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
    gc.freeze()


def serve(main: Coroutine[Any, Any, T]) -> T:
    """Run a service's main coroutine on uvloop if installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def describe() -> str:
    gen0, gen1, gen2 = gc.get_threshold()
    return f"gc thresholds {gen0}/{gen1}/{gen2}, {gc.get_freeze_count():,} objects frozen"


__all__ = ["GEN0_THRESHOLD", "describe", "serve", "tune_gc"]
