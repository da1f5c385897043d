"""The RabbitMQ adapter: ``broker`` (topology, publish, consume, dead letters), ``codec`` (the
envelope in AMQP properties), ``acks`` (coalesced acknowledgements)."""

from ordermesh.messaging.rabbitmq.broker import HOW_TO_START, RabbitBroker, RabbitSubscription
from ordermesh.messaging.rabbitmq.codec import CONTENT_TYPE, derived_message_id

__all__ = ["CONTENT_TYPE", "HOW_TO_START", "RabbitBroker", "RabbitSubscription", "derived_message_id"]
