"""Async gRPC client for the payment service, for other services (it needs a service token).

Answers are plain dataclasses, errors ``ordermesh.errors`` classes. Every call has a deadline
(``timeout`` seconds, per client or per call). Every PaymentService method is idempotent by
order id, so UNAVAILABLE (the provider or the server failed; nothing was recorded) and ABORTED
(another call for the same order is in flight: ``IdempotencyKeyInUse``) are retried, with backoff,
within that deadline, through the payments circuit breaker (``client.rpc``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from google.protobuf.timestamp_pb2 import Timestamp

from ordermesh.client.rpc import GrpcClient
from ordermesh.payments.v1 import payments_pb2 as pb
from ordermesh.payments.v1 import payments_pb2_grpc as pb_grpc
from ordermesh.resilience import Guard

DEFAULT_TARGET = "127.0.0.1:50052"

PaymentStatus = Literal["pending", "succeeded", "declined", "refunded", "cancelled"]
_STATUSES: dict[int, PaymentStatus] = {
    pb.Payment.PENDING: "pending",
    pb.Payment.SUCCEEDED: "succeeded",
    pb.Payment.DECLINED: "declined",
    pb.Payment.REFUNDED: "refunded",
    pb.Payment.CANCELLED: "cancelled",
}


@dataclass(frozen=True, slots=True)
class PaymentResult:
    payment_id: str
    order_id: str
    status: Literal["succeeded", "declined"]
    decline_reason: str
    amount: int
    currency: str

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True, slots=True)
class RefundResult:
    order_id: str
    payment_id: str
    refunded_now: int  # by this call
    refunded_total: int  # by every call
    currency: str
    status: PaymentStatus


@dataclass(frozen=True, slots=True)
class Payment:
    payment_id: str
    order_id: str
    status: PaymentStatus
    amount: int
    currency: str
    charged: int
    refunded: int
    decline_reason: str
    refund_reason: str
    created_at: datetime | None
    updated_at: datetime | None


def _time(stamp: Timestamp, present: bool) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if present else None


def _status(value: int) -> PaymentStatus:
    status = _STATUSES.get(value)
    if status is None:
        raise ValueError(f"unknown payment status {value}: is this client older than the server?")
    return status


class PaymentsClient(GrpcClient):
    downstream = "payments"

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        token: str | Callable[[], str] | None = None,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        guard: Guard | None = None,
    ) -> None:
        super().__init__(target, token, timeout, retries, guard)
        self.stub = pb_grpc.PaymentServiceStub(self.channel)

    async def process_payment(
        self, order_id: str, amount: int, currency: str, *, timeout: float | None = None
    ) -> PaymentResult:
        request = pb.ProcessPaymentRequest(order_id=order_id, amount=amount, currency=currency)
        r = await self._call(self.stub.ProcessPayment, request, timeout)
        if r.status not in (pb.PaymentResult.SUCCEEDED, pb.PaymentResult.DECLINED):
            raise ValueError(f"unknown payment result status {r.status}")
        status: Literal["succeeded", "declined"] = (
            "succeeded" if r.status == pb.PaymentResult.SUCCEEDED else "declined"
        )
        return PaymentResult(r.payment_id, r.order_id, status, r.decline_reason, r.amount, r.currency)

    async def refund(self, order_id: str, reason: str = "", *, timeout: float | None = None) -> RefundResult:
        request = pb.RefundRequest(order_id=order_id, reason=reason)
        r = await self._call(self.stub.Refund, request, timeout)
        return RefundResult(
            r.order_id, r.payment_id, r.refunded_now, r.refunded_total, r.currency, _status(r.status)
        )

    async def get_payment(self, order_id: str, *, timeout: float | None = None) -> Payment:
        p = await self._call(self.stub.GetPayment, pb.GetPaymentRequest(order_id=order_id), timeout)
        return Payment(
            payment_id=p.payment_id,
            order_id=p.order_id,
            status=_status(p.status),
            amount=p.amount,
            currency=p.currency,
            charged=p.charged,
            refunded=p.refunded,
            decline_reason=p.decline_reason,
            refund_reason=p.refund_reason,
            created_at=_time(p.created_at, p.HasField("created_at")),
            updated_at=_time(p.updated_at, p.HasField("updated_at")),
        )


__all__ = ["DEFAULT_TARGET", "Payment", "PaymentResult", "PaymentsClient", "RefundResult"]
