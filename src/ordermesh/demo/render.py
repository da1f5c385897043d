"""The demo's live view: the orders table the terminal redraws while the orders move, and the
one-line state of the order service's circuit breakers (also printed in the summary)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

from ordermesh.demo.rows import Row

SHOWN_ROWS = 30


def orders_table(rows: Sequence[Row], breakers: Sequence[dict[str, Any]]) -> Table:
    """The live table: open orders first, at most ``SHOWN_ROWS``, the breakers as its caption."""
    done = sum(r.done for r in rows)
    table = Table(title=f"ordermesh demo: {done} of {len(rows)} orders ended")
    for column in ("order", "user", "total", "state", "current step", "reason"):
        table.add_column(column, overflow="fold")
    # Open orders first: they are what is moving.
    shown = sorted(rows, key=lambda r: r.done)[:SHOWN_ROWS]
    for r in shown:
        style = {"shipped": "green", "cancelled": "yellow", "error": "red"}.get(r.status, "cyan")
        table.add_row(
            r.order_id or "-",
            r.user,
            f"{r.total / 100:.2f} {r.currency}" if r.order_id else "-",
            f"[{style}]{r.status}[/{style}]",
            escape(r.step),
            escape(r.reason or r.error),
        )
    captions = [breakers_line(breakers)] if breakers else []
    if len(rows) > SHOWN_ROWS:
        captions.append(f"{len(rows) - SHOWN_ROWS} more not shown")
    table.caption = "\n".join(captions) or None
    return table


def breakers_line(breakers: Sequence[dict[str, Any]]) -> str:
    """``breakers: payments OPEN (12 refused), inventory closed, …``"""
    parts = []
    for b in breakers:
        state = str(b["state"])
        shown = state.upper() if state in ("open", "half_open") else state
        refused = f" ({b['rejected']} refused)" if b.get("rejected") else ""
        parts.append(f"{b['downstream']} {shown}{refused}")
    return "breakers: " + ", ".join(parts)
