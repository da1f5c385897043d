"""The RabbitMQ adapter: ``broker`` (topology, publish, consume, dead letters), ``subscription``
(one consumer), ``codec`` (the envelope in AMQP properties), ``acks`` (coalesced
acknowledgements), and the hot path under aiormq: ``frames`` (reading), ``tap`` (deliveries),
``publisher`` and ``properties`` (writing)."""

from ordermesh.messaging.rabbitmq.broker import HOW_TO_START, RabbitBroker
from ordermesh.messaging.rabbitmq.codec import CONTENT_TYPE, derived_message_id
from ordermesh.messaging.rabbitmq.subscription import RabbitSubscription

__all__ = ["CONTENT_TYPE", "HOW_TO_START", "RabbitBroker", "RabbitSubscription", "derived_message_id"]
