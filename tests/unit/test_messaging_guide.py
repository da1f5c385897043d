"""docs/messaging.md's code, run: the guide's consumer and relay do what the guide says."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ordermesh.db import connect
from ordermesh.eventstore import NewEvent, SqlEventStore
from ordermesh.messaging.port import Message
from tests.helpers import Collector, dead_letters, eventually

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "messaging.md"


def _guide() -> dict[str, Any]:
    """Every ```python block of the guide, executed in one namespace."""
    namespace: dict[str, Any] = {"__name__": "messaging_guide"}
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.DOTALL)
    assert len(blocks) == 4
    exec(compile("\n".join(blocks), str(GUIDE), "exec"), namespace)
    return namespace


async def test_the_guides_consumer_and_relay_work_as_written(tmp_path: Path) -> None:
    guide = _guide()
    broker = await guide["connect_broker"]("memory://")
    db = await connect(f"sqlite:///{tmp_path / 'billing.db'}")
    store = await SqlEventStore.open(await connect(f"sqlite:///{tmp_path / 'events.db'}"))
    try:
        await broker.declare_exchange("orders")
        subscription = await guide["start_billing"](broker, db)

        # The relay turns the payment event into order.paid; billing books it once.
        await store.append("o-1", [NewEvent("OrderCreated", {"user_id": "u"})], 0)
        await store.append("o-1", [NewEvent("PaymentProcessed", {"amount": 1250, "payment_id": "p"})], 1)
        relay = await guide["relay_for"](store, broker)
        assert await relay.step() == 2
        # The consumer commits on its own task: nothing to await but the table.
        booked = await eventually(lambda: db.fetch("SELECT order_id, total FROM ledger"))
        assert [tuple(r) for r in booked] == [("o-1", 1250)]

        # The same event published again (a relay restarted mid-batch): no second effect.
        paid = (await store.read_all(1, 10))[0]
        again = await guide["order_paid_message"](paid)
        await broker.publish("orders", [again, Message.json("order.paid", {"total": 1})])
        letters = await dead_letters(broker, "billing.order_paid", 1)
        assert "without id or total" in letters[0].error  # the PermanentError, dead-lettered
        await subscription.stop()  # in-flight deliveries finish first
        assert [tuple(r) for r in await db.fetch("SELECT order_id, total FROM ledger")] == [("o-1", 1250)]
    finally:
        await broker.close()
        await store.close()
        await db.close()


async def test_the_guides_outbox_table_publishes_what_was_committed(tmp_path: Path) -> None:
    guide = _guide()
    broker = await guide["connect_broker"]("memory://")
    db = await connect(f"sqlite:///{tmp_path / 'inventory.db'}")
    try:
        await db.execute("CREATE TABLE stock (sku TEXT PRIMARY KEY, reserved INTEGER NOT NULL)")
        await db.execute("INSERT INTO stock VALUES ('SKU-1', 0)")
        await broker.declare_exchange("inventory")
        audit = Collector()
        await broker.subscribe("audit", "inventory", ["stock.#"], audit)
        outbox = await guide["SqlOutbox"].open(db)
        await guide["reserve_stock"](db, outbox, "SKU-1", 3)
        assert await guide["OutboxPublisher"](outbox, broker).step() == 1
        got = await audit.wait_for(1)
        assert got[0].message.payload() == {"sku": "SKU-1", "qty": 3}
        assert [tuple(r) for r in await db.fetch("SELECT sku, reserved FROM stock")] == [("SKU-1", 3)]
    finally:
        await broker.close()
        await db.close()
