"""The suite's one kit of test helpers: ``from tests.helpers import X`` for every X below.
Test modules import from here (or from its modules), never from one another.

- timing (``tests.helpers.timing``): the one timeout policy (``TIMEOUT``, ``PROCESS_TIMEOUT``,
  every ceiling ``scaled`` by ``ORDERMESH_TEST_TIMEOUT_SCALE``), ``eventually`` (async) and
  ``eventually_sync`` (another process's state), ``within`` (an awaitable's ceiling) and
  ``promptly`` (a bound a test proves, by the loop's clock).
- messaging: ``Collector`` (a handler that keeps its deliveries), ``dead_letters`` (the DLQ
  poller), ``FAST`` and ``FAST_LONG`` retry policies, ``FailsOnce``, ``take``, ``order_payload``.
- backends: PostgreSQL and RabbitMQ for tests (``PG_URL``, ``AMQP_URL``, ``require_rabbitmq``,
  ``amqp_url``, ``in_ci``) and ``OnMemory`` / ``OnSqlite`` / ``OnPostgres``, the adapters a
  contract suite (``tests/contract/suites``) is run on.
- servers, in the test's loop: ``running_api`` (the order API on uvicorn), ``serve``,
  ``TcpProxy``, ``Silent``, ``free_port``, ``order_body``. A whole service in-process:
  ``ordermesh.kit.testing.running(spec, settings)``.
- processes: ``start_up`` / ``up`` (``ordermesh up``), ``start_service`` and ``Fleet``
  (``ordermesh run NAME``), ``cli``, ``stop``; every output to a file.
- saga: ``fulfilment(style, tmp_path)``, the four services of a saga in-process, and ``System``
  with the saga's invariants.
- payments: the simulated ``Provider`` and ``open_service``; documents:
  ``assert_committed_document``.
"""

from tests.helpers.backends import (
    AMQP_URL,
    PG_URL,
    OnMemory,
    OnPostgres,
    OnSqlite,
    amqp_prefix,
    amqp_url,
    in_ci,
    missing,
    require_fast_path,
    require_rabbitmq,
)
from tests.helpers.documents import assert_committed_document
from tests.helpers.messaging import (
    FAST,
    FAST_LONG,
    Collector,
    FailsOnce,
    dead_letters,
    order_payload,
    take,
)
from tests.helpers.payments import LIMIT, Provider, open_service
from tests.helpers.processes import (
    BIN,
    HTTP_PORTS,
    UP_LOG,
    Fleet,
    clean_env,
    cli,
    health_urls,
    start_service,
    start_up,
    stop,
    tail,
    up,
    wait_ready,
)
from tests.helpers.saga import (
    CHOREOGRAPHED,
    STOCK,
    STYLES,
    System,
    broker_for,
    drop_topology,
    fulfilment,
)
from tests.helpers.servers import Api, Silent, TcpProxy, free_port, order_body, running_api, serve
from tests.helpers.spans import captured_spans, named
from tests.helpers.timing import (
    PROCESS_TIMEOUT,
    SCALE,
    TIMEOUT,
    Ticks,
    eventually,
    eventually_sync,
    promptly,
    scaled,
    within,
)

__all__ = [
    "AMQP_URL",
    "BIN",
    "CHOREOGRAPHED",
    "FAST",
    "FAST_LONG",
    "HTTP_PORTS",
    "LIMIT",
    "PG_URL",
    "PROCESS_TIMEOUT",
    "SCALE",
    "STOCK",
    "STYLES",
    "TIMEOUT",
    "UP_LOG",
    "Api",
    "Collector",
    "FailsOnce",
    "Fleet",
    "OnMemory",
    "OnPostgres",
    "OnSqlite",
    "Provider",
    "Silent",
    "System",
    "TcpProxy",
    "Ticks",
    "amqp_prefix",
    "amqp_url",
    "assert_committed_document",
    "broker_for",
    "captured_spans",
    "clean_env",
    "cli",
    "dead_letters",
    "drop_topology",
    "eventually",
    "eventually_sync",
    "free_port",
    "fulfilment",
    "health_urls",
    "in_ci",
    "missing",
    "named",
    "open_service",
    "order_body",
    "order_payload",
    "promptly",
    "require_fast_path",
    "require_rabbitmq",
    "running_api",
    "scaled",
    "serve",
    "start_service",
    "start_up",
    "stop",
    "tail",
    "take",
    "up",
    "wait_ready",
    "within",
]
