"""The payment service's own tables: one payment row per order, and a ledger of money movements.

Every transition is one conditional statement (``… WHERE status = …``), so two callers, in this
process or another, cannot both make it; the ledger's ``UNIQUE (order_id, kind)`` backs that up:
an order is charged at most once and refunded at most once, whatever races.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from ordermesh.db import Row, SqlDb, Tx, migrate
from ordermesh.db.port import ts_param, ts_value
from ordermesh.services.payments.domain import CANCELLED_BEFORE_CHARGE, Payment, Status

_PAYMENTS = """CREATE TABLE IF NOT EXISTS payments (
    order_id text PRIMARY KEY,
    payment_id text NOT NULL,
    status text NOT NULL,
    amount bigint NOT NULL,
    currency text NOT NULL,
    charged bigint NOT NULL DEFAULT 0 CHECK (charged >= 0),
    refunded bigint NOT NULL DEFAULT 0 CHECK (refunded >= 0 AND refunded <= charged),
    decline_reason text NOT NULL DEFAULT '',
    refund_reason text NOT NULL DEFAULT '',
    claim text,
    claimed_at {ts},
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL)"""
_LEDGER = """CREATE TABLE IF NOT EXISTS payment_ledger (
    id {id} PRIMARY KEY,
    order_id text NOT NULL,
    payment_id text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('charge', 'refund')),
    amount bigint NOT NULL CHECK (amount > 0),
    currency text NOT NULL,
    recorded_at {ts} NOT NULL,
    UNIQUE (order_id, kind))"""
_DDL = {
    "postgres": [_PAYMENTS.format(ts="timestamptz"), _LEDGER.format(id="bigserial", ts="timestamptz")],
    "sqlite": [_PAYMENTS.format(ts="integer"), _LEDGER.format(id="INTEGER", ts="integer")],
}
_COLUMNS = (
    "order_id, payment_id, status, amount, currency, charged, refunded, decline_reason, refund_reason, "
    "created_at, updated_at, claimed_at"
)

Kind = Literal["charge", "refund"]


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    order_id: str
    payment_id: str
    kind: Kind
    amount: int
    currency: str
    recorded_at: datetime


class PaymentStore:
    def __init__(self, db: SqlDb) -> None:
        self.db = db

    @classmethod
    async def open(cls, db: SqlDb) -> PaymentStore:
        await migrate(db, _DDL)
        return cls(db)

    def _ts(self, value: datetime) -> Any:
        return ts_param(self.db.dialect, value)

    def _payment(self, row: Row) -> Payment:
        dialect = self.db.dialect
        return Payment(
            order_id=str(row[0]),
            payment_id=str(row[1]),
            status=Status(row[2]),
            amount=int(row[3]),
            currency=str(row[4]),
            charged=int(row[5]),
            refunded=int(row[6]),
            decline_reason=str(row[7]),
            refund_reason=str(row[8]),
            created_at=ts_value(dialect, row[9]),
            updated_at=ts_value(dialect, row[10]),
            claimed_at=None if row[11] is None else ts_value(dialect, row[11]),
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self.db.transaction() as tx:
            yield tx

    async def get(self, order_id: str) -> Payment | None:
        row = await self.db.fetchrow(f"SELECT {_COLUMNS} FROM payments WHERE order_id = $1", order_id)
        return None if row is None else self._payment(row)

    async def claim(
        self,
        order_id: str,
        payment_id: str,
        amount: int,
        currency: str,
        claim: str,
        now: datetime,
        stale_before: datetime,
    ) -> bool:
        """Make ``claim`` the one charge in flight for the order: a new PENDING row, or a PENDING
        one whose claim is older than ``stale_before`` (its caller died) for the same amount."""
        rows = await self.db.write_fetch(
            "INSERT INTO payments (order_id, payment_id, status, amount, currency, claim, claimed_at, "
            "created_at, updated_at) VALUES ($1, $2, 'pending', $3, $4, $5, $6, $6, $6) "
            "ON CONFLICT (order_id) DO UPDATE SET claim = excluded.claim, claimed_at = excluded.claimed_at, "
            "updated_at = excluded.updated_at "
            "WHERE payments.status = 'pending' AND payments.claimed_at < $7 "
            "AND payments.amount = excluded.amount AND payments.currency = excluded.currency "
            "RETURNING claim",
            order_id,
            payment_id,
            amount,
            currency,
            claim,
            self._ts(now),
            self._ts(stale_before),
        )
        return bool(rows) and rows[0][0] == claim

    async def release(self, order_id: str, claim: str) -> None:
        """Forget a claim whose charge was not recorded (the provider failed): a retry starts afresh."""
        await self.db.execute(
            "DELETE FROM payments WHERE order_id = $1 AND status = 'pending' AND claim = $2", order_id, claim
        )

    async def settle_charge(
        self, tx: Tx, order_id: str, claim: str, approved: bool, reason: str, now: datetime
    ) -> Payment | None:
        """PENDING -> SUCCEEDED (charged = amount) or DECLINED; None if ``claim`` is no longer the
        order's (a retry took a stale claim over)."""
        row = await tx.fetchrow(
            "UPDATE payments SET status = $3, charged = CASE WHEN $4 THEN amount ELSE 0 END, "
            "decline_reason = $5, claim = NULL, claimed_at = NULL, updated_at = $6 "
            f"WHERE order_id = $1 AND status = 'pending' AND claim = $2 RETURNING {_COLUMNS}",
            order_id,
            claim,
            Status.SUCCEEDED.value if approved else Status.DECLINED.value,
            approved,
            reason,
            self._ts(now),
        )
        return None if row is None else self._payment(row)

    async def cancel_before_charge(self, order_id: str, payment_id: str, reason: str, now: datetime) -> bool:
        """Record that the order was refunded before any charge (False: it has a payment already)."""
        rows = await self.db.write_fetch(
            "INSERT INTO payments (order_id, payment_id, status, amount, currency, refund_reason, "
            "created_at, updated_at) VALUES ($1, $2, 'cancelled', 0, '', $3, $4, $4) "
            "ON CONFLICT (order_id) DO NOTHING RETURNING order_id",
            order_id,
            payment_id,
            reason,
            self._ts(now),
        )
        return bool(rows)

    async def cancel_stale(
        self, order_id: str, reason: str, now: datetime, stale_before: datetime
    ) -> Payment | None:
        """A PENDING row whose caller died (claim older than ``stale_before``) -> CANCELLED."""
        rows = await self.db.write_fetch(
            "UPDATE payments SET status = 'cancelled', refund_reason = $2, claim = NULL, claimed_at = NULL, "
            "updated_at = $3 WHERE order_id = $1 AND status = 'pending' AND claimed_at < $4 "
            f"RETURNING {_COLUMNS}",
            order_id,
            reason,
            self._ts(now),
            self._ts(stale_before),
        )
        return self._payment(rows[0]) if rows else None

    async def decline_cancelled(
        self, tx: Tx, order_id: str, amount: int, currency: str, now: datetime
    ) -> Payment | None:
        """The first charge of an order cancelled before it: CANCELLED -> DECLINED, nothing charged."""
        row = await tx.fetchrow(
            "UPDATE payments SET status = 'declined', amount = $2, currency = $3, decline_reason = $4, "
            f"updated_at = $5 WHERE order_id = $1 AND status = 'cancelled' RETURNING {_COLUMNS}",
            order_id,
            amount,
            currency,
            CANCELLED_BEFORE_CHARGE,
            self._ts(now),
        )
        return None if row is None else self._payment(row)

    async def settle_refund(self, tx: Tx, order_id: str, reason: str, now: datetime) -> Payment | None:
        """SUCCEEDED -> REFUNDED (the whole charge); None if it was not SUCCEEDED any more."""
        row = await tx.fetchrow(
            "UPDATE payments SET status = 'refunded', refunded = charged, refund_reason = $2, "
            f"updated_at = $3 WHERE order_id = $1 AND status = 'succeeded' RETURNING {_COLUMNS}",
            order_id,
            reason,
            self._ts(now),
        )
        return None if row is None else self._payment(row)

    async def record(self, tx: Tx, payment: Payment, kind: Kind, amount: int, now: datetime) -> None:
        await tx.execute(
            "INSERT INTO payment_ledger (order_id, payment_id, kind, amount, currency, recorded_at) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            payment.order_id,
            payment.payment_id,
            kind,
            amount,
            payment.currency,
            self._ts(now),
        )

    async def ledger(self, order_id: str) -> list[LedgerEntry]:
        rows = await self.db.fetch(
            "SELECT order_id, payment_id, kind, amount, currency, recorded_at FROM payment_ledger "
            "WHERE order_id = $1 ORDER BY id",
            order_id,
        )
        return [
            LedgerEntry(str(r[0]), str(r[1]), r[2], int(r[3]), str(r[4]), ts_value(self.db.dialect, r[5]))
            for r in rows
        ]

    async def audit(self) -> list[str]:
        """Orders whose money does not add up: charged < refunded, or ledger sums that differ from
        the payment row (or ledger entries with no payment row). Empty when all is well."""
        rows = await self.db.fetch(
            "SELECT coalesce(p.order_id, l.order_id), p.charged, p.refunded, l.charged, l.refunded FROM "
            "payments p FULL OUTER JOIN (SELECT order_id, "
            "sum(CASE WHEN kind = 'charge' THEN amount ELSE 0 END) AS charged, "
            "sum(CASE WHEN kind = 'refund' THEN amount ELSE 0 END) AS refunded "
            "FROM payment_ledger GROUP BY order_id) l ON l.order_id = p.order_id"
        )
        problems = []
        for r in rows:
            row = (int(r[1] or 0), int(r[2] or 0))
            ledger = (int(r[3] or 0), int(r[4] or 0))
            if r[1] is None or row != ledger or row[0] < row[1]:
                problems.append(f"{r[0]}: row charged/refunded {row}, ledger {ledger}")
        return problems
