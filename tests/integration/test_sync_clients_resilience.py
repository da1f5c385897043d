"""The sync SDK clients (``OrdermeshClient``, ``SyncOrdersGrpcClient``) over real sockets: they
send the deadline on, retry only what may be retried, and stand behind a circuit breaker that
opens on an outage and then refuses without touching the network."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from ordermesh.client import OrdermeshClient, SyncOrdersGrpcClient
from ordermesh.errors import DomainError, InfrastructureError
from ordermesh.resilience import CircuitOpen, Guard, Policy, RetryPolicy
from tests.helpers import free_port

pytestmark = pytest.mark.usefixtures("no_retry_waits")


class Script(http.server.BaseHTTPRequestHandler):
    """Answers each request with the next status of ``statuses`` (then 200), recording headers."""

    statuses: ClassVar[list[int]] = []
    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        self.seen.append(dict(self.headers))
        status = self.statuses.pop(0) if self.statuses else 200
        body = b'{"id": "o-1"}' if status == 200 else b'{"detail": "scripted"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[str]:
    Script.statuses, Script.seen = [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Script)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_rest_client_sends_its_deadline_and_retries_only_what_may_succeed(scripted: str) -> None:
    with OrdermeshClient(scripted, token="t", timeout=2.0, retries=2) as client:
        Script.statuses = [503, 502]
        assert client.get_order("o-1")["id"] == "o-1"
        assert len(Script.seen) == 3  # two outages retried
        assert all(0 < int(h["X-Ordermesh-Deadline-Ms"]) <= 2000 for h in Script.seen)
        Script.seen.clear()
        Script.statuses = [405]
        with pytest.raises(DomainError, match="HTTP 405"):
            client.get_order("o-1")
        assert len(Script.seen) == 1  # a refused request is an answer: not retried
        assert client.guard.snapshot()["state"] == "closed"


def test_the_rest_client_opens_its_breaker_on_an_outage_then_refuses_without_calling() -> None:
    guard = Guard("orders", Policy(timeout=1.0, retry=RetryPolicy(attempts=1), breaker_failures=3))
    with OrdermeshClient(f"http://127.0.0.1:{free_port()}", token="t", guard=guard) as client:
        for _ in range(3):
            with pytest.raises(InfrastructureError) as refused:
                client.get_order("o-1")
            assert not isinstance(refused.value, CircuitOpen)
        with pytest.raises(CircuitOpen) as fast:
            client.get_order("o-1")
    assert fast.value.downstream == "orders" and fast.value.retry_after > 0
    snap = guard.snapshot()
    assert (snap["state"], snap["failures"], snap["rejected"]) == ("open", 3, 1)


def test_the_grpc_client_retries_unavailable_then_its_breaker_opens() -> None:
    guard = Guard("orders", Policy(timeout=1.0, retry=RetryPolicy(attempts=2), breaker_failures=4))
    with SyncOrdersGrpcClient(f"127.0.0.1:{free_port()}", token="t", guard=guard) as client:
        for _ in range(2):
            with pytest.raises(InfrastructureError):
                client.get_order("o-1")
        assert guard.snapshot()["retries"] == 2  # each call was tried twice
        with pytest.raises(CircuitOpen):
            client.get_order("o-1")
    assert guard.snapshot()["failures"] == 4
