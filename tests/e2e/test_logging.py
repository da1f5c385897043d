"""What ``ordermesh up`` writes to stderr: JSON lines from every process with
``ORDERMESH_LOG_FORMAT=json``, one order followed by its id and trace; and no gRPC fork warning
when the supervisor starts its children, even with gRPC at work in the supervisor."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from ordermesh.auth import Tokens
from ordermesh.config import Settings
from tests.helpers import free_port, order_body

BIN = Path(sys.executable).parent / "ordermesh"
PORTS = {
    "orders": "ORDERMESH_HTTP_PORT",
    "payments": "ORDERMESH_PAYMENTS_HTTP_PORT",
    "inventory": "ORDERMESH_INVENTORY_HTTP_PORT",
    "shipping": "ORDERMESH_SHIPPING_HTTP_PORT",
    "notifications": "ORDERMESH_NOTIFICATIONS_HTTP_PORT",
}
OTHER_PORTS = ("ORDERMESH_GRPC_PORT", "ORDERMESH_PAYMENTS_GRPC_PORT", "ORDERMESH_INVENTORY_GRPC_PORT")
# Loaded by every Python process of the test's `ordermesh up` (PYTHONPATH); acts in the
# supervisor alone (its children have ORDERMESH_PARENT_PID): a gRPC channel retrying a refused
# connection keeps gRPC's threads at work, as an OTLP/gRPC exporter's channel would.
BUSY_GRPC = """
import os

if not os.environ.get("ORDERMESH_PARENT_PID"):
    import grpc

    _channel = grpc.insecure_channel("127.0.0.1:1")
    _channel.subscribe(lambda state: None, try_to_connect=True)
    open(os.environ["BUSY_GRPC_MARK"], "w").close()
"""


@contextlib.contextmanager
def up(tmp_path: Path, **extra: str) -> Iterator[tuple[dict[str, str], Path]]:
    """`ordermesh up` until the block ends (then Ctrl-C, and it must exit 0): its environment
    and the file its stderr goes to (never a pipe: nobody would read it while it runs)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ORDERMESH_")},
        "ORDERMESH_DATA_DIR": str(tmp_path / "data"),
        "ORDERMESH_MAIL_SINK_PORT": str(free_port()),
        **{variable: str(free_port()) for variable in (*PORTS.values(), *OTHER_PORTS)},
        **extra,
    }
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as err:
        proc = subprocess.Popen([str(BIN), "up"], env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        waiting = {f"http://127.0.0.1:{env[variable]}/readyz" for variable in PORTS.values()}
        deadline = time.monotonic() + 60
        while waiting:
            for url in list(waiting):
                with contextlib.suppress(requests.ConnectionError):
                    if requests.get(url, timeout=1).status_code == 200:
                        waiting.discard(url)
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ordermesh up did not become ready ({waiting}):\n{stderr.read_text()[-3000:]}")
            time.sleep(0.1)  # other processes' endpoints: nothing to wait on but polling
        yield env, stderr
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, stderr.read_text()[-3000:]


def test_json_lines_from_every_process_follow_one_order(tmp_path: Path) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    with up(tmp_path, ORDERMESH_LOG_FORMAT="json") as (env, stderr):
        api = f"http://127.0.0.1:{env['ORDERMESH_HTTP_PORT']}/api"
        token = Tokens(Settings()).issue("alice")
        headers = {"Authorization": f"Bearer {token}", "traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
        created = requests.post(f"{api}/orders", json=order_body(), headers=headers, timeout=10)
        assert created.status_code == 201, created.text
        order_id = created.json()["id"]
        deadline = time.monotonic() + 30
        order = f"{api}/orders/{order_id}"
        while requests.get(order, headers=headers, timeout=5).json()["status"] != "shipped":
            assert time.monotonic() < deadline, "the order did not ship"
            time.sleep(0.1)
        # Its mail goes out after it shipped: the notification's line is the last of the order.
        while "shipped' to" not in stderr.read_text():
            assert time.monotonic() < deadline, "no mail for the shipped order"
            time.sleep(0.1)

    lines: list[dict[str, Any]] = [json.loads(line) for line in stderr.read_text().splitlines()]
    assert {line["service"] for line in lines} == {"supervisor", *PORTS}
    fields = {"time", "level", "logger", "message", "trace_id", "span_id", "order_id", "saga_id"}
    assert all(fields <= set(line) for line in lines)
    (access,) = [line for line in lines if line.get("http_path") == "/api/orders"]
    assert access["service"] == "orders" and access["logger"] == "ordermesh.http"
    assert access["http_method"] == "POST" and access["http_status"] == 201 and access["http_user"] == "alice"
    assert access["order_id"] == order_id and access["trace_id"] == trace
    (creation,) = [line for line in lines if line["message"].startswith("order created")]
    assert creation["order_id"] == order_id and creation["trace_id"] == trace
    # The order's trace reaches the service that mails its customer, through the broker.
    assert {"orders", "notifications"} <= {line["service"] for line in lines if line["trace_id"] == trace}


def test_up_starts_its_children_without_the_grpc_fork_warning(tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(BUSY_GRPC)
    mark = tmp_path / "busy"
    with up(tmp_path, PYTHONPATH=str(hook), BUSY_GRPC_MARK=str(mark)) as (_, stderr):
        pass
    assert mark.exists()  # gRPC was at work in the supervisor as it started the five children
    text = stderr.read_text()
    assert "fork_posix" not in text and "skipping fork() handlers" not in text, text
