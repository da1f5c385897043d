"""The demo's closing summary: how many orders ended each way and how fast, the breakers and
the order reads seen while it ran, and the exit status (0 when every order ended well or is
parked, else 1 with the orders that did not)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ordermesh.demo.live import Demo
from ordermesh.demo.render import breakers_line
from ordermesh.demo.rows import OUTCOMES, Row


def _ms(values: Sequence[float], q: int) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0] * 1000:.0f} ms"
    return f"{statistics.quantiles(values, n=100, method='inclusive')[q - 1] * 1000:.0f} ms"


def summarize(rows: Sequence[Row], console: Console, demo: Demo | None = None) -> int:
    """One line per outcome (count, p50 and p99 completion latency); 0 when every order ended
    shipped or cancelled with a reason, or is parked waiting for a downstream that is down (it
    resumes by itself), else 1 with the orders that did not."""
    table = Table(title="summary")
    for column in ("outcome", "orders", "p50", "p99"):
        table.add_column(column, justify="left" if column == "outcome" else "right")
    for outcome in OUTCOMES:
        ended = [r for r in rows if r.outcome == outcome]
        latencies = sorted(r.latency for r in ended if r.latency is not None)
        table.add_row(outcome, str(len(ended)), _ms(latencies, 50), _ms(latencies, 99))
    console.print(table)
    for outcome in OUTCOMES:
        latencies = sorted(r.latency for r in rows if r.outcome == outcome and r.latency is not None)
        count = sum(r.outcome == outcome for r in rows)
        console.print(
            f"{outcome}: {count}  p50 {_ms(latencies, 50)}  p99 {_ms(latencies, 99)}", highlight=False
        )
    if demo is not None:
        if demo.breakers:
            console.print(breakers_line(demo.breakers), highlight=False)
        reads = sorted(demo.reads)
        console.print(
            f"order reads while it ran: {len(reads)} answered, {demo.failed_reads} failed, "
            f"p50 {_ms(reads, 50)}, p99 {_ms(reads, 99)}",
            highlight=False,
        )
    parked = sum(r.outcome == "parked" for r in rows)
    if parked:
        console.print(
            f"{parked} order(s) parked: their sagas wait for a downstream whose circuit is open, and "
            "resume when it recovers (`ordermesh faults clear`, `ordermesh saga show ORDER_ID`)",
            highlight=False,
        )
    waiting = ("parked", "cancelled-unavailable", "other")
    unexpected = [
        r for r in rows if r.outcome not in waiting and not r.outcome.startswith(_EXPECTED[r.intent])
    ]
    if unexpected:  # not a failure (stock may have run low from earlier runs), but worth a note
        console.print(f"note: {len(unexpected)} order(s) ended otherwise than planned", highlight=False)
    bad = [r for r in rows if r.outcome == "other"]
    if not bad:
        how = "ended shipped or cancelled with a reason" + (" or are parked" if parked else "")
        console.print(f"ok: all {len(rows)} orders {how}", highlight=False)
        return 0
    console.print(
        f"[red]{len(bad)} of {len(rows)} orders did not end shipped or cancelled with a reason:[/red]"
    )
    for r in bad:
        what = (
            r.error or f"{r.status}{f' at {r.step}' if r.step else ''}{f': {r.reason}' if r.reason else ''}"
        )
        console.print(f"  {r.order_id or '(not placed)'}  {escape(what)}", highlight=False)
    return 1


_EXPECTED = {"ship": "shipped", "decline": "cancelled-declined", "short": "cancelled-out-of-stock"}
