"""The system as a user meets it: `ordermesh up` in its own process, the CLI and the clients.
(``start_up``, ``cli`` and the ``system`` fixture are the kit's: ``tests.helpers.processes``,
``tests/e2e/conftest.py``.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from ordermesh import tracing
from ordermesh.client import AsyncOrdermeshClient, OrdermeshClient
from ordermesh.errors import NotFound, PermissionDenied, Unauthenticated
from tests.helpers import (
    AMQP_URL,
    BIN,
    HTTP_PORTS,
    UP_LOG,
    clean_env,
    cli,
    eventually_sync,
    free_port,
    health_urls,
    require_rabbitmq,
    start_service,
    start_up,
    stop,
)


@pytest.fixture(params=["embedded", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def system_on_each_broker(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, dict[str, str]]]:
    """`ordermesh up` on the embedded broker, and on RabbitMQ (a namespace of its own, deleted
    afterwards; under CI=true a missing RabbitMQ fails)."""
    if request.param == "embedded":
        yield request.getfixturevalue("system")
        return
    require_rabbitmq()
    prefix = f"e2e{uuid.uuid4().hex[:10]}."
    proc, url, env = start_up(tmp_path, broker_url=f"{AMQP_URL}?prefix={prefix}")
    try:
        yield url, env
    finally:
        stop(proc)  # a clean stop (Ctrl-C): the notification child cancels its consumers
        # the system really ran on RabbitMQ: the notification queues were there
        assert f"{prefix}notifications.order_created" in _delete_namespace(prefix)


def _delete_namespace(prefix: str) -> list[str]:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        listing = subprocess.run(
            ["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True, text=True, timeout=30
        ).stdout.split()
        channel = connection.channel()
        ours = [name for name in listing if name.startswith(prefix)]
        for name in ours:
            channel.queue_delete(name)
        channel.exchange_delete(f"{prefix}orders")
        return ours
    finally:
        connection.close()


def test_up_serves_the_api_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    proc, url, _ = start_up(tmp_path)
    # Its banner comes once the supervisor has seen every service ready (start_up saw them too).
    eventually_sync(lambda: "Ctrl-C stops." in (tmp_path / UP_LOG).read_text(), what="the banner")
    code = stop(proc, timeout=20)
    out = (tmp_path / UP_LOG).read_text()
    assert code == 0, out
    assert f"{url}/api" in out and "ORDERMESH_TOKEN=ey" in out
    assert "development default" in out


def test_up_runs_five_healthy_processes_and_brings_a_killed_one_back(tmp_path: Path) -> None:
    proc, _, env = start_up(tmp_path)
    try:
        children = subprocess.run(
            ["pgrep", "-P", str(proc.pid), "-a"], capture_output=True, text=True, check=True
        ).stdout
        by_service = {line.split()[-1]: int(line.split()[0]) for line in children.splitlines()}
        assert set(by_service) == set(HTTP_PORTS), children  # one process per service
        os.kill(by_service["payments"], signal.SIGKILL)
        payments = f"http://127.0.0.1:{env['ORDERMESH_PAYMENTS_HTTP_PORT']}/readyz"
        eventually_sync(
            lambda: requests.get(payments, timeout=1).status_code == 200,
            what="the supervisor restarted payments",
            ignoring=(requests.ConnectionError,),
        )
        for health in health_urls(env):
            assert requests.get(health, timeout=2).status_code == 200, health
        # The operator's view of the same system.
        info = json.loads(cli(env, "info", "--json"))
        assert [s["service"] for s in info["services"]] == list(HTTP_PORTS)
        assert {s["database"].rsplit("/", 1)[1] for s in info["services"]} == {
            f"{name}.db" for name in HTTP_PORTS
        }
    finally:
        code = stop(proc)
    out = (tmp_path / UP_LOG).read_text()
    assert code == 0, out
    assert "payments exited with code -9; restarting in 1 s" in out
    leftover = subprocess.run(
        ["pgrep", "-f", env["ORDERMESH_DATA_DIR"]], capture_output=True, text=True
    ).stdout
    assert leftover == ""  # every child stopped with it


def test_a_busy_port_is_one_line_and_nothing_starts(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = int(taken.getsockname()[1])
        env = clean_env(ORDERMESH_DATA_DIR=str(tmp_path / "data"), ORDERMESH_PAYMENTS_GRPC_PORT=str(busy))
        done = subprocess.run([str(BIN), "up"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stdout.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{busy} (Address already in use): "
        "set ORDERMESH_PAYMENTS_GRPC_PORT to a free port or stop what is using it"
    ], done.stdout + done.stderr
    assert not (tmp_path / "data").exists()


def test_clients_cli_and_the_seed_snippet_against_a_real_server(system: tuple[str, dict[str, str]]) -> None:
    url, env = system
    token = cli(env, "token", "alice").strip().splitlines()[-1]
    with OrdermeshClient(url, token=token, timeout=5) as client:
        order = client.create_order(
            "alice@example.com",
            "EUR",
            [{"sku": "SKU-1", "quantity": 2, "unit_price": 1250}],
            idempotency_key="k1",
        )
        assert (
            client.create_order(
                "alice@example.com",
                "EUR",
                [{"sku": "SKU-1", "quantity": 2, "unit_price": 1250}],
                idempotency_key="k1",
            )
            == order
        )
        assert client.get_order(order["id"]) == order
        assert [e["type"] for e in client.get_order_events(order["id"])] == ["OrderCreated"]
        with pytest.raises(NotFound):
            client.get_order("missing")
        with pytest.raises(PermissionDenied):
            client.get_user_orders("bob")
    with pytest.raises(Unauthenticated), OrdermeshClient(url, timeout=5) as anonymous:
        anonymous.get_user_orders("alice")

    # An order written by the operator CLI straight into the database reaches the running
    # server's read models through its subscription.
    out = cli(
        env, "order", "create", "--user", "alice", "--email", "alice@example.com", "--item", "SKU-9:1:500"
    )
    assert "SKU-9" in out

    # The seed's snippet, made real.
    user_id = "alice"

    def both() -> list[dict[str, Any]]:
        response = requests.get(
            f"{url}/api/users/{user_id}/orders", headers={"Authorization": f"Bearer {token}"}, timeout=5
        )
        orders: list[dict[str, Any]] = response.json()["orders"]
        assert len(orders) == 2, orders
        return orders

    orders = eventually_sync(both, 10, interval=0.1)
    assert [o["items"][0]["sku"] for o in orders] == ["SKU-9", "SKU-1"]
    assert orders[1]["id"] == order["id"] and orders[1]["user_email"] == "alice@example.com"

    listed = cli(env, "order", "list", "--user", "alice")
    assert order["id"] in listed


async def test_async_client_against_a_real_server(system: tuple[str, dict[str, str]]) -> None:
    url, env = system
    token = cli(env, "token", "carol").strip().splitlines()[-1]
    async with AsyncOrdermeshClient(url, token=token) as client:
        created = await client.create_order(
            "carol@example.com", "USD", [{"sku": "A", "quantity": 1, "unit_price": 5}]
        )
        orders = await client.get_user_orders("carol", timeout=2)
        assert [o["id"] for o in orders] == [created["id"]]
        assert (await client.get_order(created["id"], version=1))["status"] == "pending"


def test_an_order_placed_over_rest_is_confirmed_by_email(
    system_on_each_broker: tuple[str, dict[str, str]],
) -> None:
    """REST -> event store -> outbox relay -> broker (embedded, RabbitMQ) -> notification process ->
    SMTP sink, all in the caller's trace."""
    from ordermesh.services.notifications.sink import list_mail

    url, env = system_on_each_broker
    token = cli(env, "token", "dora").strip().splitlines()[-1]
    trace = os.urandom(16).hex()
    response = requests.post(
        f"{url}/api/orders",
        json={
            "user_email": "dora@example.com",
            "currency": "EUR",
            "items": [{"sku": "SKU-1", "quantity": 1, "unit_price": 990}],
        },
        headers={"Authorization": f"Bearer {token}", "traceparent": f"00-{trace}-{os.urandom(8).hex()}-01"},
        timeout=5,
    )
    assert response.status_code == 201, response.text
    order = response.json()
    store = Path(env["ORDERMESH_DATA_DIR"]) / "mail.jsonl"

    def both_mails() -> list[Any]:
        mails = list_mail(store)
        assert len(mails) >= 2, mails
        return mails

    # The confirmation, then (the saga pays, reserves and ships it) the shipping mail: one each.
    mails = eventually_sync(both_mails, 30, interval=0.1)
    assert sorted((m.rcpt_tos[0], m.subject) for m in mails) == [
        ("dora@example.com", f"Order {order['id']} confirmed"),
        ("dora@example.com", f"Order {order['id']} shipped"),
    ]
    assert {tracing.trace_id(m.traceparent) for m in mails} == {trace}  # one order, one trace
    assert "dora@example.com" in cli(env, "mail", "list")
    assert [json.loads(line)["trace_id"] for line in cli(env, "mail", "list", "--json").splitlines()] == [
        trace,
        trace,
    ]
    assert "0 pending" in cli(env, "outbox", "status")
    metrics = requests.get(f"{url}/metrics", timeout=5).text
    # order.created and order.shipped; the steps between (order.paid, …) have no queue: dropped.
    assert 'ordermesh_outbox_published_total{relay="orders-outbox"} 2.0' in metrics


def test_the_readmes_python_snippets_run_as_written(system: tuple[str, dict[str, str]]) -> None:
    import re

    url, env = system
    token = cli(env, "token", "alice").strip().splitlines()[-1]
    shell = {**env, "ORDERMESH_URL": url, "ORDERMESH_TOKEN": token}
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    assert len(blocks) >= 2
    # The order the gRPC snippet follows; its port is this test's, not the default.
    requests.post(
        f"{url}/api/orders",
        json={
            "user_email": "alice@example.com",
            "currency": "EUR",
            "items": [{"sku": "SKU-1", "quantity": 1, "unit_price": 5}],
        },
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    ).raise_for_status()
    for block in blocks:
        block = block.replace("127.0.0.1:50051", f"127.0.0.1:{env['ORDERMESH_GRPC_PORT']}")
        done = subprocess.run(
            [sys.executable, "-c", block], env=shell, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"{block}\n{done.stderr}"


@pytest.mark.parametrize("service", ["payments", "shipping"])
def test_run_serves_one_service_and_sigterm_drains_it_to_exit_0(tmp_path: Path, service: str) -> None:
    port = free_port()
    env = clean_env(
        ORDERMESH_DATA_DIR=str(tmp_path / "data"),
        ORDERMESH_PAYMENTS_GRPC_PORT=str(free_port()),
        **{f"ORDERMESH_{service.upper()}_HTTP_PORT": str(port)},
    )
    log = tmp_path / f"{service}.log"
    proc = start_service(service, env, str(port), log)
    try:
        # Its own database, in the data dir, with the embedded broker beside it: the defaults of `up`.
        assert (tmp_path / "data" / f"{service}.db").exists() and (tmp_path / "data" / "broker.db").exists()
    finally:
        code = stop(proc, signal.SIGTERM, timeout=20)
    err = log.read_text()
    assert code == 0, err
    assert f"{service}: stopped" in err


def _running(pid: str) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_kill_9_of_up_takes_its_services_and_ports_with_it(tmp_path: Path) -> None:
    proc, _, env = start_up(tmp_path)
    proc.kill()
    proc.wait()

    def alive() -> list[str]:
        listed = subprocess.run(["pgrep", "-f", env["ORDERMESH_DATA_DIR"]], capture_output=True, text=True)
        return [pid for pid in listed.stdout.split() if _running(pid)]

    # The kernel kills the children at once (reaping is init's): gone within a moment.
    eventually_sync(lambda: not alive(), 5, what="services gone with their supervisor")
    # and so a restart on the same ports starts at once
    again, _, _ = start_up(tmp_path, int(env["ORDERMESH_HTTP_PORT"]), int(env["ORDERMESH_GRPC_PORT"]))
    assert stop(again) == 0
