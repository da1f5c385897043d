"""Issue 10 through a real process: ``ordermesh run orders`` killed -9 (by its own failpoint) after
the order is committed and before its Idempotency-Key is completed; restarted, the client's retry
with the same key answers the ONE order, and there is one OrderCreated event (so one
order.created message, one mail)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
import requests

from ordermesh.db import connect
from ordermesh.eventstore.sql import SqlEventStore
from ordermesh.failpoints import ENV
from ordermesh.services.orders.commands import AFTER_APPEND
from tests.helpers import clean_env, cli, free_port, order_body, start_service, stop


async def _created_events(url: str) -> list[str]:
    db = await connect(url)
    store = await SqlEventStore.open(db)
    try:
        return [e.data["order_id"] for e in await store.read_all(0, 10_000) if e.type == "OrderCreated"]
    finally:
        await store.close()
        await db.close()


def test_a_kill_between_the_order_and_its_key_leaves_one_order(tmp_path: Path, sql_url: str) -> None:
    port = str(free_port())
    env = clean_env(
        ORDERMESH_DATA_DIR=str(tmp_path / "data"),
        ORDERMESH_ORDERS_DATABASE_URL=sql_url,
        ORDERMESH_HTTP_PORT=port,
        ORDERMESH_GRPC_PORT=str(free_port()),
    )
    token = cli(env, "token", "alice").strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "kill-9"}
    orders = f"http://127.0.0.1:{port}/api/orders"
    log = tmp_path / "orders.log"

    proc = start_service("orders", {**env, ENV: f"{AFTER_APPEND}=kill"}, port, log)
    try:
        with pytest.raises(requests.ConnectionError):
            requests.post(orders, json=order_body(), headers=headers, timeout=10)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        stop(proc, signal.SIGKILL)
    [created] = asyncio.run(_created_events(sql_url))  # committed before the kill

    proc = start_service("orders", env, port, log)
    try:
        first = requests.post(orders, json=order_body(), headers=headers, timeout=10)
        again = requests.post(orders, json=order_body(), headers=headers, timeout=10)
        other = requests.post(orders, json=order_body(currency="USD"), headers=headers, timeout=10)
    finally:
        code = stop(proc, signal.SIGTERM, timeout=20)
    assert code == 0, log.read_text()
    assert (first.status_code, first.headers["Idempotent-Replayed"]) == (201, "true")
    assert first.json()["id"] == created and first.headers["Location"] == f"/api/orders/{created}"
    assert (again.status_code, again.json()) == (201, first.json())
    assert other.status_code == 422, "another request under the key is refused"

    listed = cli(env, "order", "list", "--user", "alice", "--json")
    assert [o["id"] for o in _orders(listed)] == [created]
    assert asyncio.run(_created_events(sql_url)) == [created], "one OrderCreated: one order.created"


def _orders(printed: str) -> list[dict[str, object]]:
    import json

    data = json.loads(printed)
    # the list itself, or a page of it ({"orders": [...], "next": ...})
    return list(data["orders"] if isinstance(data, dict) else data)
