"""Shipments as rows: one per order (the primary key is the order id, which is what makes
scheduling idempotent under concurrency), on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import orjson

from ordermesh.db import Row, SqlDb, Tx, migrate
from ordermesh.db.port import Dialect, ts_param, ts_value
from ordermesh.services.shipping.domain import Address, Item, Shipment

_DDL = (
    "CREATE TABLE IF NOT EXISTS shipments ("
    "order_id text PRIMARY KEY, "
    "shipment_id text NOT NULL UNIQUE, "
    "tracking_id text UNIQUE, "
    "status text NOT NULL, "
    "items text NOT NULL, "
    "address text, "
    "scheduled_at {ts}, "
    "cancelled_at {ts})"
)
MIGRATIONS = {
    "postgres": [_DDL.format(ts="timestamptz")],
    "sqlite": [_DDL.format(ts="integer")],  # microseconds since the epoch (db.port.ts_param)
}

_COLUMNS = "shipment_id, order_id, tracking_id, status, items, address, scheduled_at, cancelled_at"


class ShipmentStore:
    """Reads and writes of the ``shipments`` table; writes run inside the caller's transaction."""

    def __init__(self, db: SqlDb) -> None:
        self.db = db
        self.dialect: Dialect = db.dialect

    async def migrate(self) -> None:
        await migrate(self.db, MIGRATIONS)

    async def get(self, order_id: str) -> Shipment | None:
        return await self.find(self.db, order_id)

    async def find(self, tx: Tx, order_id: str, *, for_update: bool = False) -> Shipment | None:
        # SQLite's BEGIN IMMEDIATE already holds the one write lock; PostgreSQL needs the row's.
        lock = " FOR UPDATE" if for_update and self.dialect == "postgres" else ""
        row = await tx.fetchrow(f"SELECT {_COLUMNS} FROM shipments WHERE order_id = $1{lock}", order_id)
        return None if row is None else self._shipment(row)

    async def insert(self, tx: Tx, shipment: Shipment) -> Shipment | None:
        """Insert ``shipment`` unless the order already has one; the order's row afterwards
        (``shipment`` itself when it went in, a concurrent twin's otherwise), or None when the
        row could not go in for another reason (its tracking id is taken: try another)."""
        await tx.execute(
            f"INSERT INTO shipments ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
            "ON CONFLICT DO NOTHING",
            shipment.shipment_id,
            shipment.order_id,
            shipment.tracking_id,
            shipment.status,
            _items_json(shipment.items),
            _address_json(shipment.address),
            self._ts(shipment.scheduled_at),
            self._ts(shipment.cancelled_at),
        )
        # After a conflict PostgreSQL (read committed) sees the committed twin in this statement.
        return await self.find(tx, shipment.order_id)

    async def mark_cancelled(self, tx: Tx, shipment: Shipment) -> None:
        await tx.execute(
            "UPDATE shipments SET status = $2, cancelled_at = $3 WHERE order_id = $1",
            shipment.order_id,
            shipment.status,
            self._ts(shipment.cancelled_at),
        )

    def _ts(self, value: Any) -> Any:
        return None if value is None else ts_param(self.dialect, value)

    def _shipment(self, row: Row) -> Shipment:
        address = orjson.loads(row[5]) if row[5] is not None else None
        return Shipment(
            shipment_id=str(row[0]),
            order_id=str(row[1]),
            tracking_id=None if row[2] is None else str(row[2]),
            status="cancelled" if row[3] == "cancelled" else "scheduled",
            items=tuple(Item(str(i["sku"]), int(i["quantity"])) for i in orjson.loads(row[4])),
            address=Address(**address) if address is not None else None,
            scheduled_at=None if row[6] is None else ts_value(self.dialect, row[6]),
            cancelled_at=None if row[7] is None else ts_value(self.dialect, row[7]),
        )


def _items_json(items: tuple[Item, ...]) -> str:
    return orjson.dumps([{"sku": i.sku, "quantity": i.quantity} for i in items]).decode()


def _address_json(address: Address | None) -> str | None:
    if address is None:
        return None
    fields = {
        "name": address.name,
        "line1": address.line1,
        "line2": address.line2,
        "city": address.city,
        "postal_code": address.postal_code,
        "country": address.country,
    }
    return orjson.dumps(fields).decode()


__all__ = ["MIGRATIONS", "ShipmentStore"]
