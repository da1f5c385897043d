"""Who consumes what: every service's consumer queues, read from the constants the service
publishes (``QUEUES``, its retry policy, its prefetch, its inbox), and what the service does
with each message it takes, in words the code cannot give.

``queues.py`` turns these into queue channels and ``receive_<queue>`` operations. A service that
adds a queue needs nothing here; a message reaching a queue without a word in ``reactions`` stops
the document's generation (``Consumer.reaction``), so the document never says less than the code.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import get_args

from ordermesh.config import ENV_PREFIX, Settings
from ordermesh.contracts import inventory as stock
from ordermesh.contracts import payments as pay
from ordermesh.contracts import shipping as ship
from ordermesh.messaging.port import Broker, RetryPolicy
from ordermesh.services.inventory import consumers as inventory
from ordermesh.services.notifications import handler as mail
from ordermesh.services.notifications import service as notifications
from ordermesh.services.orders import choreography
from ordermesh.services.payments import consumers as payments
from ordermesh.services.shipping import consumers as shipping

SAGA_VARIABLE = f"{ENV_PREFIX}SAGA"
SAGA_STYLES: tuple[str, ...] = get_args(Settings.model_fields["saga"].annotation)
# What the choreography's consumers get: ``subscribe_all`` leaves the broker's default.
BROKER_PREFETCH: int = inspect.signature(Broker.subscribe).parameters["prefetch"].default


@dataclass(frozen=True)
class Consumer:
    """One service's consumers, as its module declares them."""

    service: str
    module: str  # where ``queues`` is declared
    queues: Mapping[str, tuple[str, str]]  # queue -> (exchange, binding key)
    retry: RetryPolicy
    prefetch: int
    inbox: str  # the inbox's consumer name
    styles: tuple[str, ...]  # the ``ORDERMESH_SAGA`` values it consumes under
    reactions: Mapping[str, str]  # routing key -> what the service does with the message
    duplicates: str  # how a redelivered message is kept from acting twice

    def reaction(self, routing_key: str) -> str:
        try:
            return self.reactions[routing_key]
        except KeyError:
            raise LookupError(
                f"{self.module}: `{routing_key}` reaches a {self.service} queue but ordermesh.asyncapi."
                "consumers does not say what the service does with it"
            ) from None

    @property
    def saga(self) -> str:
        """When it consumes, in the saga styles' terms."""
        if set(self.styles) == set(SAGA_STYLES):
            return f"whatever the saga style (`{SAGA_VARIABLE}`)"
        only = " or ".join(f"`{SAGA_VARIABLE}={style}`" for style in self.styles)
        return f"only with {only} (its part of the {' or '.join(self.styles)} saga)"


def _inbox_around(inbox: str, idempotent: str) -> str:
    """The choreography services' guard: ``react_once``'s inbox around a use case of their own."""
    return (
        f"the `{inbox}` inbox is read before and written after the reaction (not in one transaction: "
        f"{idempotent}), so a redelivery after a crash between the two does nothing twice"
    )


_CHOREOGRAPHED = ("choreographed",)

CONSUMERS: tuple[Consumer, ...] = (
    Consumer(
        service="order",
        module=choreography.__name__,
        queues=choreography.QUEUES,
        retry=choreography.RETRY,
        prefetch=BROKER_PREFETCH,
        inbox=choreography.INBOX_CONSUMER,
        styles=_CHOREOGRAPHED,
        reactions={
            pay.PAYMENT_PROCESSED: "records the payment on the order and the payment step in its saga log",
            pay.PAYMENT_FAILED: "cancels the order (payment declined), and the others compensate",
            pay.PAYMENT_REFUNDED: "records the refund: the payment's compensation is done",
            stock.STOCK_RESERVED: "records the reservation (retried while the order does not show its "
            "payment yet)",
            stock.STOCK_RESERVATION_FAILED: "cancels the order (stock unavailable), and the others "
            "compensate",
            stock.STOCK_RELEASED: "records the release: the reservation's compensation is done",
            stock.STOCK_COMMITTED: "records the commit, the saga's last step (retried until the order "
            "shows it shipped)",
            ship.SHIPMENT_SCHEDULED: "ships the order unless it was cancelled first: one append to its "
            "stream decides (retried while its reservation is not recorded yet)",
            ship.SHIPMENT_CANCELLED: "records the cancelled shipment: its compensation is done",
        },
        duplicates=_inbox_around(
            choreography.INBOX_CONSUMER,
            "each reaction is idempotent by the order's state and by its saga record, both written "
            "in transactions of their own",
        ),
    ),
    Consumer(
        service="payment",
        module=payments.__name__,
        queues=payments.QUEUES,
        retry=payments.RETRY,
        prefetch=BROKER_PREFETCH,
        inbox=payments.INBOX_CONSUMER,
        styles=_CHOREOGRAPHED,
        reactions={
            "order.created": f"charges the order's `total` in its `currency` -> `{pay.PAYMENT_PROCESSED}` "
            f"or `{pay.PAYMENT_FAILED}` (declined when the order's cancellation came first)",
            "order.cancelled": f"refunds the charge -> `{pay.PAYMENT_REFUNDED}` (declined or never "
            "charged: nothing refunded, nothing published)",
        },
        duplicates=_inbox_around(
            payments.INBOX_CONSUMER,
            "a charge asks an outside provider; charge and refund are idempotent by order id, a "
            "second one answering the first's outcome",
        ),
    ),
    Consumer(
        service="inventory",
        module=inventory.__name__,
        queues=inventory.QUEUES,
        retry=inventory.RETRY,
        prefetch=BROKER_PREFETCH,
        inbox=inventory.INBOX_CONSUMER,
        styles=_CHOREOGRAPHED,
        reactions={
            "order.created": f"keeps the order's lines, which `{pay.PAYMENT_PROCESSED}` does not carry "
            "(in the inbox's own transaction: lines and message id commit together)",
            pay.PAYMENT_PROCESSED: "reserves the lines kept from the order's `order.created` -> "
            f"`{stock.STOCK_RESERVED}` or `{stock.STOCK_RESERVATION_FAILED}` (retried while the "
            "order's lines have not arrived)",
            "order.cancelled": f"releases the reservation -> `{stock.STOCK_RELEASED}` (nothing held: "
            "nothing published; a release before the reserve makes the reserve fail)",
            "order.shipped": f"commits the reservation: the stock is shipped -> `{stock.STOCK_COMMITTED}`",
        },
        duplicates=(
            f"the lines kept on `order.created` commit with the `{inventory.INBOX_CONSUMER}` inbox's "
            "record of the message; for the others, "
            + _inbox_around(
                inventory.INBOX_CONSUMER,
                "the store's use cases open their own transactions and are idempotent by order id",
            )
        ),
    ),
    Consumer(
        service="shipping",
        module=shipping.__name__,
        queues=shipping.QUEUES,
        retry=shipping.RETRY,
        prefetch=BROKER_PREFETCH,
        inbox=shipping.INBOX_CONSUMER,
        styles=_CHOREOGRAPHED,
        reactions={
            stock.STOCK_RESERVED: f"schedules the order's shipment (the message carries its lines) -> "
            f"`{ship.SHIPMENT_SCHEDULED}`; refused, and acknowledged, when the cancellation came first",
            "order.cancelled": f"cancels the shipment -> `{ship.SHIPMENT_CANCELLED}` (none scheduled "
            "yet: a cancelled tombstone, nothing published, that refuses the late schedule)",
        },
        duplicates=_inbox_around(
            shipping.INBOX_CONSUMER,
            "the service's use cases open their own transactions and are idempotent by order id",
        ),
    ),
    Consumer(
        service="notification",
        module=notifications.__name__,
        queues={queue: (notifications.EXCHANGE, key) for queue, key in notifications.QUEUES.items()},
        retry=notifications.DEFAULT_RETRY,
        prefetch=notifications.DEFAULT_PREFETCH,
        inbox=notifications.INBOX_CONSUMER,
        styles=SAGA_STYLES,
        reactions={key: f'mails the order\'s customer "{subject}"' for key, subject in mail.SUBJECTS.items()},
        duplicates=(
            f"a mail cannot join a transaction, so it is sent first and the message id recorded in the "
            f"`{notifications.INBOX_CONSUMER}` inbox after; a crash in between sends it again, with the "
            "same Message-ID (`<{message id}@ordermesh>`) for the receiver to drop"
        ),
    ),
)
