"""The embedded mail sink keeps each mail's trace; `ordermesh mail list` shows it; the `dlq`
commands report a broker they cannot use in one line, not a traceback.

The CLI runs as its own process, as an operator would run it beside `ordermesh up`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ordermesh.services.notifications import Mail, ReceivedMail, SmtpMailer, list_mail, start_mail_sink

BIN = Path(sys.executable).parent / "ordermesh"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
# A line as the sink stored it before it kept the trace.
OLD_LINE: dict[str, Any] = {
    "received_at": "2024-01-02T03:04:05+00:00",
    "mail_from": "orders@ordermesh.local",
    "rcpt_tos": ["old@example.com"],
    "subject": "Order o-0 confirmed",
    "message_id": "<m-0@ordermesh>",
    "body": "Hello,\n",
}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True, timeout=60)


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "ORDERMESH_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "250", **extra}
    for name in ("ORDERMESH_DATABASE_URL", "ORDERMESH_BROKER_URL"):
        if name not in extra:
            env.pop(name, None)
    return env


def mail(n: int, headers: dict[str, str]) -> Mail:
    return Mail(
        to=f"u{n}@example.com",
        subject=f"Order o-{n} confirmed",
        body="Hello,\n",
        message_id=f"<m-{n}@ordermesh>",
        headers=headers,
    )


async def test_the_sink_keeps_the_traceparent_of_each_mail(tmp_path: Path) -> None:
    store = tmp_path / "mail.jsonl"
    sink = await start_mail_sink("127.0.0.1", 0, store)
    try:
        mailer = SmtpMailer(f"smtp://127.0.0.1:{sink.port}", timeout=5)
        await mailer.send(mail(1, {"Traceparent": TRACEPARENT}))
        await mailer.send(mail(2, {}))
        received = await sink.wait_for(2)
    finally:
        await sink.stop()
    assert [m.traceparent for m in received] == [TRACEPARENT, None]
    assert list_mail(store) == received  # what a later process reads back


def test_a_line_stored_before_the_trace_was_kept_still_loads(tmp_path: Path) -> None:
    store = tmp_path / "mail.jsonl"
    new = ReceivedMail(**{**OLD_LINE, "message_id": "<m-1@ordermesh>"}, traceparent=TRACEPARENT)
    store.write_text(json.dumps(OLD_LINE) + "\n" + json.dumps(new.to_json()) + "\n", encoding="utf-8")
    mails = list_mail(store)
    assert [(m.message_id, m.traceparent) for m in mails] == [
        ("<m-0@ordermesh>", None),
        ("<m-1@ordermesh>", TRACEPARENT),
    ]


def test_mail_list_shows_the_trace_id_of_each_mail(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    store = tmp_path / "data" / "mail.jsonl"
    store.parent.mkdir(parents=True)
    new = ReceivedMail(**{**OLD_LINE, "message_id": "<m-1@ordermesh>"}, traceparent=TRACEPARENT)
    store.write_text(json.dumps(OLD_LINE) + "\n" + json.dumps(new.to_json()) + "\n", encoding="utf-8")

    done = cli(env, "mail", "list", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["message_id"], r["traceparent"], r["trace_id"]) for r in rows] == [
        ("<m-0@ordermesh>", None, None),
        ("<m-1@ordermesh>", TRACEPARENT, TRACE),
    ]

    table = cli(env, "mail", "list")
    assert table.returncode == 0, table.stdout + table.stderr
    assert "trace" in table.stdout and TRACE in table.stdout
    assert TRACEPARENT not in table.stdout  # the trace id, not the whole header


@pytest.mark.parametrize("args", [("list",), ("show", "m-1"), ("replay", "--all")])
def test_dlq_reports_an_unreachable_broker_without_a_traceback(tmp_path: Path, args: tuple[str, ...]) -> None:
    # Nothing listens on port 1.
    done = cli(cli_env(tmp_path, ORDERMESH_BROKER_URL="amqp://guest:guest@127.0.0.1:1/"), "dlq", *args)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "error:" in done.stderr and "RabbitMQ is not reachable" in done.stderr
    assert "rabbitmq-server -detached" in " ".join(done.stderr.split())  # how to start it


def test_dlq_rejects_a_malformed_broker_url_without_a_traceback(tmp_path: Path) -> None:
    done = cli(cli_env(tmp_path, ORDERMESH_BROKER_URL="kafka://nowhere"), "dlq", "list")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "ORDERMESH_BROKER_URL='kafka://nowhere'" in done.stderr and "expected amqp://" in done.stderr
