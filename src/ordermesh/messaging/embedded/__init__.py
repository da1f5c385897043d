"""The embedded broker: the broker port on a SQLite file, no server (``sqlite:///PATH``).

Tables (all durable, shared by every process that opens the file)::

    mq_exchanges  (name)                            declared topic exchanges
    mq_bindings   (exchange, binding_key, queue)    topic bindings
    mq_queues     (name)                            consumer queues
    mq_messages   one row per (message, queue): the envelope, ``attempt``, ``deliveries`` (claims
                  since it was last enqueued or retried) and ``visible_at``: the time from which
                  it may be claimed. Publishing sets it to 0; a claim to now + lease; a retry to
                  now + the policy's delay; an ack deletes the row.
    mq_dead       dead letters: the envelope, the queue it died in, error, attempts, dead_at

``publish`` routes every message through the bindings and inserts its rows in one
``BEGIN IMMEDIATE`` transaction: all or nothing, ``Unroutable`` (and nothing written) if any
message reaches no queue, and durable ("confirmed") when it returns.

A subscription claims up to ``prefetch`` minus its in-flight count with one ``UPDATE …
RETURNING`` inside ``BEGIN IMMEDIATE`` (SQLite's write lock makes the claim atomic across
processes), oldest first, stamping a lease token of its own. While handlers run, a heartbeat
extends the leases of its rows; if the process dies, the leases expire and another consumer
claims the rows again with ``redelivered=True``. Ack, retry and dead-lettering only touch a row
that still carries the subscription's token, so a consumer that lost its lease cannot ack
someone else's claim (delivery stays at-least-once).

A poison message that kills its consumer before the ack would come back forever. As a quorum
queue's ``x-delivery-limit`` does on RabbitMQ, a row delivered more than ``delivery_limit``
times (20 by default) without an ack, each consumer having died or lost its lease, is not
handed out again: the claim that finds it moves it to ``mq_dead`` instead, in the claim's
transaction ("delivered past the queue's delivery limit without an ack"). With a limit of 2
the third unacked delivery is the last, as on RabbitMQ. Only claims count: a retry (the
handler raised) resets ``deliveries``, and ``replay`` re-enqueues as a first attempt.

Consumers peek (a cheap read, no write lock) and sleep until the next row is due, at most
``poll_interval``; a publish in the same process wakes them at once.

The package: ``broker`` (``EmbeddedBroker``: opening, topology, publish, dead letters, replay),
``subscription`` (``EmbeddedSubscription``: claiming, leases, ack, retry, dead-lettering),
``schema`` (the tables and the envelope's columns) and ``wakers`` (in-process wake-ups). Its
log lines keep the logger name ``ordermesh.messaging.embedded``.
"""

from ordermesh.messaging.embedded.broker import EmbeddedBroker
from ordermesh.messaging.embedded.subscription import EmbeddedSubscription

__all__ = ["EmbeddedBroker", "EmbeddedSubscription"]
