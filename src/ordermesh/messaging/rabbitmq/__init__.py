"""The RabbitMQ adapter: ``broker`` (the adapter: open, publish, subscribe), ``topology`` (declaring
and deleting exchanges, queues, delay queues and DLQs), ``deadletters`` (listing and replaying
them), ``subscription`` (one
consumer and its deliveries: handler, retry, dead letter), ``publishing`` (confirmed publishes),
``naming`` (the topology's names), ``codec`` (the envelope in AMQP properties), ``acks``
(coalesced acknowledgements), ``wire`` (how a broker talks to aiormq; the stock path) and, behind
one seam (``fastpath.install``), the fast path under aiormq: ``frames`` (reading), ``tap``
(deliveries), ``publisher`` and ``properties`` (writing), imported only on the aiormq and pamqp
versions they were verified on."""

from ordermesh.messaging.rabbitmq.broker import HOW_TO_START, RabbitBroker
from ordermesh.messaging.rabbitmq.codec import CONTENT_TYPE, derived_message_id
from ordermesh.messaging.rabbitmq.subscription import RabbitSubscription

__all__ = ["CONTENT_TYPE", "HOW_TO_START", "RabbitBroker", "RabbitSubscription", "derived_message_id"]
