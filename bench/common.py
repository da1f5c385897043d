"""Shared helpers: the PostgreSQL server, throwaway schemas, payloads and the figures table."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg

PG_URL = os.environ.get("ORDERMESH_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def pg_url() -> str:
    """The server to benchmark against; refuses anything that is not on this machine."""
    host = urlsplit(PG_URL).hostname
    if host not in _LOCAL_HOSTS:
        raise SystemExit(f"benchmarks only talk to 127.0.0.1, not {host!r} (ORDERMESH_BENCH_POSTGRES_URL)")
    return PG_URL


def with_search_path(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}search_path={schema}"


@asynccontextmanager
async def pg_schema(prefix: str) -> AsyncIterator[str]:
    """A fresh, empty schema, dropped with everything in it on the way out."""
    schema = f"bench_{prefix}_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(pg_url(), timeout=5)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        try:
            yield schema
        finally:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()


def event_data(n: int) -> dict[str, Any]:
    """An order-ish event payload of about 200 bytes of JSON."""
    return {
        "order_id": f"order-{n:012d}",
        "customer_id": f"customer-{n % 9973:08d}",
        "sku": f"SKU-{n % 1000:05d}",
        "quantity": n % 7 + 1,
        "unit_price_cents": 1999 + n % 500,
        "currency": "EUR",
        "channel": "web",
        "note": "gift wrap, please leave it at the front door",
    }


@dataclass(frozen=True)
class Figure:
    name: str
    ours: float
    peer: float
    unit: str
    peer_name: str

    @property
    def ratio(self) -> float:
        return self.ours / self.peer if self.peer else float("inf")


def print_figures(title: str, figures: list[Figure]) -> None:
    print(f"\n{title}")
    width = max(len(f.name) for f in figures)
    print(f"  {'case':<{width}}  {'ours':>12}  {'peer':>12}  {'ratio':>6}  unit / peer")
    for f in figures:
        figures_text = f"{f.ours:>12,.0f}  {f.peer:>12,.0f}  {f.ratio:>5.2f}x"
        print(f"  {f.name:<{width}}  {figures_text}  {f.unit} / {f.peer_name}")
