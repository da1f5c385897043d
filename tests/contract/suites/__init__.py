"""The contract suites as importable base classes: each ``*Contract`` class holds the tests every
adapter of one port must pass, and a test module runs them on an adapter by subclassing it with
the adapter's fixture (``database_url``, or ``broker_url`` for the broker)::

    from tests.contract.suites.eventstore import EventStoreContract
    from tests.helpers import OnSqlite


    class TestSqliteEventStore(OnSqlite, EventStoreContract):
        pass

A class whose name starts with ``Test`` is collected, with every test it inherits; the
``*Contract`` classes themselves are not. An adapter that no URL names overrides the fixture the
suite builds from that URL instead (each module's docstring says which). ``tests/contract/test_*.py``
run every suite on the built-in adapters.

broker          ``BrokerContract``: routing, the envelope, retries, dead letters, replay, ordering
eventstore      ``EventStoreContract``: appends, concurrency, reads, snapshots
repository      ``RepositoryContract``: aggregates over an event store
subscription    ``SubscriptionContract``: catch-up subscriptions and their checkpoints
readmodel       ``ReadModelContract``: projections and rebuilds
order_feed      ``OrderFeedContract``: the order update feed
limits_feed     ``FeedWakeUpContract``: idle feeds on a SQL store share one wake-up
outbox_relay    ``OutboxRelayContract``: the event-store outbox relay
table_outbox    ``TableOutboxContract``: the transactional outbox table
inbox           ``InboxContract``: one effect per message id
idempotency_store  ``IdempotencyStoreContract`` (and ``SqlIdempotencyStoreContract``)
saga            ``SagaStoreContract``: the saga log and engine
sql_port        ``SqlPortContract``: the SQL port under cancellation
payments_store, inventory_store, inventory_concurrency, shipping_store: each service's store
"""
