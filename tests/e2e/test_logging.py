"""What ``ordermesh up`` writes to stderr: JSON lines from every process with
``ORDERMESH_LOG_FORMAT=json``, one order followed by its id and trace; and no gRPC fork warning
when the supervisor starts its children, even with gRPC at work in the supervisor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests

from ordermesh.auth import Tokens
from ordermesh.config import Settings
from tests.helpers import HTTP_PORTS, eventually_sync, order_body, up

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


def test_json_lines_from_every_process_follow_one_order(tmp_path: Path) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    # Its stderr alone: every line of it must be JSON (stdout is the banner for a person).
    with up(tmp_path, with_stdout=False, ORDERMESH_LOG_FORMAT="json") as (url, _, stderr):
        api = f"{url}/api"
        token = Tokens(Settings()).issue("alice")
        headers = {"Authorization": f"Bearer {token}", "traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
        created = requests.post(f"{api}/orders", json=order_body(), headers=headers, timeout=10)
        assert created.status_code == 201, created.text
        order_id = created.json()["id"]
        order = f"{api}/orders/{order_id}"
        eventually_sync(
            lambda: requests.get(order, headers=headers, timeout=5).json()["status"] == "shipped",
            what="the order shipped",
            interval=0.1,
        )
        # Its mail goes out after it shipped: the notification's line is the last of the order.
        eventually_sync(lambda: "shipped' to" in stderr.read_text(), what="a mail for the shipped order")

    lines: list[dict[str, Any]] = [json.loads(line) for line in stderr.read_text().splitlines()]
    assert {line["service"] for line in lines} == {"supervisor", *HTTP_PORTS}
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
    with up(tmp_path, PYTHONPATH=str(hook), BUSY_GRPC_MARK=str(mark)) as (_, _, stderr):
        pass
    assert mark.exists()  # gRPC was at work in the supervisor as it started the five children
    text = stderr.read_text()
    assert "fork_posix" not in text and "skipping fork() handlers" not in text, text
