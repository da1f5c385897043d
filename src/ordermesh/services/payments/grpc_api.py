"""The payment service over gRPC: protobuf at the edge, ``PaymentService`` use cases inside.

Authentication, deadlines and error statuses live in the interceptors (``ordermesh.rpc``); each
handler only insists that the caller is a service and converts messages.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from ordermesh.auth import require_service
from ordermesh.payments.v1 import payments_pb2 as pb
from ordermesh.payments.v1 import payments_pb2_grpc as pb_grpc
from ordermesh.rpc.context import current_principal
from ordermesh.services.payments.domain import ChargeResult, Payment, RefundResult, Status
from ordermesh.services.payments.service import PaymentService

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["PaymentService"].full_name

Context = grpc.aio.ServicerContext[Any, Any]

_STATUS = {
    Status.PENDING: pb.Payment.PENDING,
    Status.SUCCEEDED: pb.Payment.SUCCEEDED,
    Status.DECLINED: pb.Payment.DECLINED,
    Status.REFUNDED: pb.Payment.REFUNDED,
    Status.CANCELLED: pb.Payment.CANCELLED,
}


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def payment_pb(payment: Payment) -> pb.Payment:
    return pb.Payment(
        payment_id=payment.payment_id,
        order_id=payment.order_id,
        status=_STATUS[payment.status],
        amount=payment.amount,
        currency=payment.currency,
        charged=payment.charged,
        refunded=payment.refunded,
        decline_reason=payment.decline_reason,
        refund_reason=payment.refund_reason,
        created_at=_timestamp(payment.created_at),
        updated_at=_timestamp(payment.updated_at),
    )


def result_pb(result: ChargeResult) -> pb.PaymentResult:
    return pb.PaymentResult(
        payment_id=result.payment_id,
        order_id=result.order_id,
        status=pb.PaymentResult.SUCCEEDED if result.succeeded else pb.PaymentResult.DECLINED,
        decline_reason=result.decline_reason,
        amount=result.amount,
        currency=result.currency,
    )


def refund_pb(result: RefundResult) -> pb.RefundResult:
    return pb.RefundResult(
        order_id=result.order_id,
        payment_id=result.payment_id,
        refunded_now=result.refunded_now,
        refunded_total=result.refunded_total,
        currency=result.currency,
        status=_STATUS[result.status],
    )


class PaymentGrpcService(pb_grpc.PaymentServiceServicer):
    def __init__(self, service: PaymentService) -> None:
        self._service = service

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_PaymentServiceServicer_to_server(self, server)

    async def ProcessPayment(self, request: pb.ProcessPaymentRequest, context: Context) -> pb.PaymentResult:
        require_service(current_principal())
        result = await self._service.process_payment(request.order_id, request.amount, request.currency)
        return result_pb(result)

    async def Refund(self, request: pb.RefundRequest, context: Context) -> pb.RefundResult:
        require_service(current_principal())
        return refund_pb(await self._service.refund(request.order_id, request.reason))

    async def GetPayment(self, request: pb.GetPaymentRequest, context: Context) -> pb.Payment:
        require_service(current_principal())
        return payment_pb(await self._service.get_payment(request.order_id))
