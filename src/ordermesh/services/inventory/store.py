"""Stock and reservations in the inventory's own database, with their messages in the outbox.

Every change is one transaction: the stock rows, the order's reservation row and the message that
announces it commit together or not at all.

Concurrency. An order's reservation row is claimed first (``INSERT ... ON CONFLICT DO NOTHING``;
on PostgreSQL a twin call for the same order waits on that insert, then finds the row and locks
it), so two calls for one order never both act. A Reserve then reads each SKU's row ``FOR UPDATE``
in SKU order (one global lock order: no deadlock between orders that share SKUs), decides all or
nothing, and only then moves units. SQLite has one writer (``BEGIN IMMEDIATE``), which serialises
the same steps. The columns' CHECKs (no negative count) are the last line of defence.

Lifecycle of an order's reservation (the proto's comments say the same to callers):

- none --Reserve--> RESERVED (all lines held) or REJECTED (nothing held; reason names short SKUs)
- none --Release--> RELEASED with no items (a tombstone): a compensation that overtook its step;
  the later Reserve is REJECTED "released before reserve" and holds nothing
- RESERVED --Release--> RELEASED (units back to available); --Commit--> COMMITTED (to shipped)
- a repeated call answers the reservation as it is, changing nothing; Reserve with other items,
  Release of COMMITTED, Commit of RELEASED/REJECTED: FAILED_PRECONDITION; Commit of none: NOT_FOUND

Messages go out only when units move or a Reserve is decided: ``stock.reserved``,
``stock.reservation_failed``, ``stock.released``, ``stock.committed``, never twice for one order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

import orjson

from ordermesh.clock import Clock, SystemClock
from ordermesh.contracts.inventory import EXCHANGE
from ordermesh.db import Row, SqlDb, Tx, migrate
from ordermesh.db.port import ts_param
from ordermesh.errors import DomainError, InfrastructureError, NotFound
from ordermesh.messaging.outbox import SqlOutbox
from ordermesh.services.inventory.domain import (
    DEMO_CATALOG,
    RELEASED_BEFORE_RESERVE,
    Line,
    Reservation,
    Status,
    StockLevel,
    check_order_id,
    check_reason,
    check_reserve,
    check_sku,
    check_skus,
    check_stock,
    rejection_reason,
    reservation_id,
    shortages,
)
from ordermesh.services.inventory.messages import message_for

_STOCK = (
    "CREATE TABLE IF NOT EXISTS inventory_stock (sku text PRIMARY KEY, "
    "available bigint NOT NULL CHECK (available >= 0), "
    "reserved bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0), "
    "shipped bigint NOT NULL DEFAULT 0 CHECK (shipped >= 0))"
)
_RESERVATIONS = (
    "CREATE TABLE IF NOT EXISTS inventory_reservations (order_id text PRIMARY KEY, "
    "reservation_id text NOT NULL, status text NOT NULL, reason text NOT NULL, "
    "items text NOT NULL, short_skus text NOT NULL, created_at {ts} NOT NULL, updated_at {ts} NOT NULL)"
)
SCHEMA = {
    "postgres": [_STOCK, _RESERVATIONS.format(ts="timestamptz")],
    "sqlite": [_STOCK, _RESERVATIONS.format(ts="INTEGER")],
}
_COLUMNS = "reservation_id, order_id, status, reason, items, short_skus"
_LEVEL = "sku, available, reserved, shipped"


def _reservation(row: Row) -> Reservation:
    items = tuple(Line(str(sku), int(qty)) for sku, qty in orjson.loads(row[4]))
    return Reservation(
        str(row[0]), str(row[1]), Status(row[2]), str(row[3]), items, tuple(orjson.loads(row[5]))
    )


def _level(row: Row) -> StockLevel:
    return StockLevel(str(row[0]), int(row[1]), int(row[2]), int(row[3]))


def _items_json(items: Sequence[Line]) -> str:
    return orjson.dumps([[line.sku, line.quantity] for line in items]).decode()


class InventoryStore:
    def __init__(self, db: SqlDb, outbox: SqlOutbox, clock: Clock | None = None) -> None:
        self.db = db
        self.outbox = outbox
        self._clock = clock or SystemClock()
        # SQLite's single writer already serialises transactions; it has no FOR UPDATE.
        self._lock = " FOR UPDATE" if db.dialect == "postgres" else ""

    @classmethod
    async def open(cls, db: SqlDb, outbox: SqlOutbox, clock: Clock | None = None) -> InventoryStore:
        await migrate(db, SCHEMA)
        return cls(db, outbox, clock)

    async def seed(self, catalog: Sequence[tuple[str, int]] = DEMO_CATALOG) -> bool:
        """Stock ``catalog`` if no SKU exists yet (a first start); whether it did."""
        async with self.db.transaction() as tx:
            if await tx.fetchrow("SELECT 1 FROM inventory_stock LIMIT 1") is not None:
                return False
            await tx.executemany(
                "INSERT INTO inventory_stock (sku, available, reserved, shipped) VALUES ($1, $2, 0, 0) "
                "ON CONFLICT (sku) DO NOTHING",
                [(check_sku(sku), check_stock(qty)) for sku, qty in catalog],
            )
        return True

    async def reserve(self, order_id: str, items: Sequence[Line]) -> Reservation:
        lines = check_reserve(order_id, items)
        fresh = Reservation(reservation_id(order_id), order_id, Status.REJECTED, "", lines)
        return await self._in_tx(lambda tx, now: self._reserve(tx, fresh, now))

    async def release(self, order_id: str, reason: str = "") -> Reservation:
        check_order_id(order_id)
        tombstone = Reservation(reservation_id(order_id), order_id, Status.RELEASED, check_reason(reason), ())
        return await self._in_tx(lambda tx, now: self._release(tx, tombstone, now))

    async def commit(self, order_id: str) -> Reservation:
        check_order_id(order_id)
        return await self._in_tx(lambda tx, now: self._commit(tx, order_id, now))

    async def reservation(self, order_id: str) -> Reservation | None:
        row = await self.db.fetchrow(
            f"SELECT {_COLUMNS} FROM inventory_reservations WHERE order_id = $1", check_order_id(order_id)
        )
        return None if row is None else _reservation(row)

    async def stock(self, skus: Sequence[str] = ()) -> list[StockLevel]:
        """The given SKUs' levels (every SKU when none is given), sorted by SKU; ``NotFound``
        naming the unknown ones."""
        wanted = check_skus(skus)
        if not wanted:
            rows = await self.db.fetch(f"SELECT {_LEVEL} FROM inventory_stock")
        else:
            marks = ", ".join(f"${i}" for i in range(1, len(wanted) + 1))
            rows = await self.db.fetch(
                f"SELECT {_LEVEL} FROM inventory_stock WHERE sku IN ({marks})", *wanted
            )
        levels = sorted((_level(r) for r in rows), key=lambda level: level.sku)
        missing = sorted(set(wanted) - {level.sku for level in levels})
        if missing:
            raise NotFound("unknown SKU: " + ", ".join(missing))
        return levels

    async def set_available(self, sku: str, available: int) -> StockLevel:
        """Set a SKU's available units (creating the SKU); reserved and shipped stay, so the stock
        that was set becomes ``available + reserved + shipped``. One statement: atomic."""
        rows = await self.db.write_fetch(
            "INSERT INTO inventory_stock (sku, available, reserved, shipped) VALUES ($1, $2, 0, 0) "
            f"ON CONFLICT (sku) DO UPDATE SET available = excluded.available RETURNING {_LEVEL}",
            check_sku(sku),
            check_stock(available, "available"),
        )
        return _level(rows[0])

    async def _in_tx(self, work: Callable[[Tx, datetime], Awaitable[Reservation]]) -> Reservation:
        """``work`` in one transaction; then the outbox's publisher is woken (after the commit:
        woken before, it would find nothing yet and sleep a poll interval)."""
        async with self.db.transaction() as tx:
            result = await work(tx, self._clock.now())
        self.outbox.wake()
        return result

    async def _reserve(self, tx: Tx, fresh: Reservation, now: datetime) -> Reservation:
        existing = await self._claim(tx, fresh, now)
        if existing is None:
            return await self._decide(tx, fresh, now)
        if existing.items == () and existing.status is Status.RELEASED:
            return await self._save(tx, dataclasses.replace(fresh, reason=RELEASED_BEFORE_RESERVE), now)
        if existing.items != fresh.items:
            raise DomainError(
                f"order {fresh.order_id!r} already has reservation {existing.reservation_id} "
                "with other items: a reservation is made once per order"
            )
        return existing

    async def _release(self, tx: Tx, tombstone: Reservation, now: datetime) -> Reservation:
        existing = await self._claim(tx, tombstone, now)
        if existing is None:
            return tombstone
        if existing.status is Status.COMMITTED:
            raise DomainError(
                f"order {tombstone.order_id!r}: its reservation was committed (shipped); shipped units "
                "are not released"
            )
        if existing.status is not Status.RESERVED:
            return existing  # released already, or nothing was ever held
        await tx.executemany(
            "UPDATE inventory_stock SET available = available + $2, reserved = reserved - $2 WHERE sku = $1",
            [(line.sku, line.quantity) for line in existing.items],
        )
        released = dataclasses.replace(existing, status=Status.RELEASED, reason=tombstone.reason)
        return await self._save(tx, released, now)

    async def _commit(self, tx: Tx, order_id: str, now: datetime) -> Reservation:
        existing = await self._locked(tx, order_id)
        if existing is None:
            raise NotFound(f"order {order_id!r} has no reservation")
        if existing.status is Status.COMMITTED:
            return existing
        if existing.status is not Status.RESERVED:
            raise DomainError(
                f"order {order_id!r}: its reservation is {existing.status.value}, nothing to commit"
            )
        await tx.executemany(
            "UPDATE inventory_stock SET reserved = reserved - $2, shipped = shipped + $2 WHERE sku = $1",
            [(line.sku, line.quantity) for line in existing.items],
        )
        return await self._save(tx, dataclasses.replace(existing, status=Status.COMMITTED), now)

    async def _decide(self, tx: Tx, fresh: Reservation, now: datetime) -> Reservation:
        """All of ``fresh``'s lines held, or none (the caller claimed the order's row)."""
        available: dict[str, int] = {}
        for line in fresh.items:  # sorted by SKU: the one lock order
            row = await tx.fetchrow(
                f"SELECT available FROM inventory_stock WHERE sku = $1{self._lock}", line.sku
            )
            if row is not None:
                available[line.sku] = int(row[0])
        short = shortages(fresh.items, available)
        if short:
            reason = rejection_reason(fresh.items, available)
            return await self._save(tx, dataclasses.replace(fresh, reason=reason, short_skus=short), now)
        await tx.executemany(
            "UPDATE inventory_stock SET available = available - $2, reserved = reserved + $2 "
            "WHERE sku = $1 AND available >= $2",
            [(line.sku, line.quantity) for line in fresh.items],
        )
        return await self._save(tx, dataclasses.replace(fresh, status=Status.RESERVED), now)

    async def _claim(self, tx: Tx, fresh: Reservation, now: datetime) -> Reservation | None:
        """Insert ``fresh`` as the order's row and return None, or lock and return the row there."""
        inserted = await tx.fetchrow(
            f"INSERT INTO inventory_reservations ({_COLUMNS}, created_at, updated_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (order_id) DO NOTHING RETURNING order_id",
            fresh.reservation_id,
            fresh.order_id,
            fresh.status.value,
            fresh.reason,
            _items_json(fresh.items),
            orjson.dumps(fresh.short_skus).decode(),
            ts_param(self.db.dialect, now),
        )
        if inserted is not None:
            return None
        existing = await self._locked(tx, fresh.order_id)
        if existing is None:  # rows are never deleted
            raise InfrastructureError(f"reservation of order {fresh.order_id!r} vanished")
        return existing

    async def _locked(self, tx: Tx, order_id: str) -> Reservation | None:
        row = await tx.fetchrow(
            f"SELECT {_COLUMNS} FROM inventory_reservations WHERE order_id = $1{self._lock}", order_id
        )
        return None if row is None else _reservation(row)

    async def _save(self, tx: Tx, reservation: Reservation, now: datetime) -> Reservation:
        """Store the reservation's new state and queue the message announcing it."""
        await tx.execute(
            "UPDATE inventory_reservations SET status = $2, reason = $3, items = $4, short_skus = $5, "
            "updated_at = $6 WHERE order_id = $1",
            reservation.order_id,
            reservation.status.value,
            reservation.reason,
            _items_json(reservation.items),
            orjson.dumps(reservation.short_skus).decode(),
            ts_param(self.db.dialect, now),
        )
        await self.outbox.add(tx, EXCHANGE, [message_for(reservation, now)])
        return reservation
