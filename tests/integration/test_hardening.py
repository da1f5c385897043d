"""Issue 10's defects that live in the shared edges, each through the real socket or process:
secrets and exposure, a database that goes away, information that must not leak, one wording
for bad input, real currencies, CLI input, log lines that cannot be split."""

from __future__ import annotations

import io
import logging
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import jwt
import pytest
from typer.testing import CliRunner

from ordermesh.auth import Tokens
from ordermesh.cli import app as cli_app
from ordermesh.client import OrdersGrpcClient
from ordermesh.config import DEV_JWT_SECRET, Settings
from ordermesh.errors import NotFound, Unauthenticated, ValidationError
from ordermesh.kit.process import main
from ordermesh.kit.testing import running
from ordermesh.logs import TextFormatter
from ordermesh.services.orders.spec import SPEC as ORDERS
from tests.helpers import TcpProxy, eventually, free_port, order_body

BIN = Path(sys.executable).parent / "ordermesh"
PASSWORD = "hunter2"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


def bearer(tokens: Tokens, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.issue(user)}"}


# -- a database that goes away ------------------------------------------------------------------


@pytest.mark.postgres
async def test_a_database_outage_is_a_503_with_retry_after_and_the_service_recovers_by_itself(
    pg_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    parts = urlsplit(pg_url)
    proxy = await TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    # A password in the URL (trust auth ignores it): it must never be shown to anyone.
    via_proxy = urlunsplit(parts._replace(netloc=f"postgres:{PASSWORD}@127.0.0.1:{proxy.port}"))
    settings = Settings(data_dir=tmp_path, broker_url="memory://", orders_database_url=via_proxy)
    try:
        async with running(ORDERS, settings) as rt:
            headers = bearer(rt.tokens, "alice")
            url = f"{rt.http_url}/api/orders"
            async with http.post(url, json=order_body(), headers=headers) as r:
                assert r.status == 201

            await proxy.cut()
            async with http.post(url, json=order_body(), headers=headers) as r:
                body = await r.text()
                assert r.status == 503, body
                assert r.headers["Content-Type"] == "application/problem+json"
                assert r.headers["Retry-After"] == "1"
                assert PASSWORD not in body
            async with http.get(f"{rt.http_url}/readyz") as r:
                body = await r.text()
                assert r.status == 503 and r.headers["Retry-After"] == "1"
                assert "orders: database unavailable" in body
                assert str(proxy.port) not in body and PASSWORD not in body  # no address, no secret

            await proxy.restore()

            async def created() -> bool:
                async with http.post(url, json=order_body(), headers=headers) as r:
                    if r.status not in (201, 503):
                        pytest.fail(f"{r.status}: {await r.text()}")
                    return r.status == 201

            # The pool reconnects by itself: no restart. The client retries as Retry-After says.
            await eventually(created, 15, what="the order service recovered", interval=0.1)
            async with http.get(f"{rt.http_url}/readyz") as r:
                assert r.status == 200
    finally:
        await proxy.stop()


# -- information that must not leak -------------------------------------------------------------


async def test_another_users_order_and_a_missing_one_answer_alike(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    settings = Settings(data_dir=tmp_path, broker_url="memory://")
    async with running(ORDERS, settings) as rt:
        async with http.post(
            f"{rt.http_url}/api/orders", json=order_body(), headers=bearer(rt.tokens, "alice")
        ) as r:
            order = await r.json()
        theirs, missing = order["id"], "00000000-0000-0000-0000-000000000000"
        before = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        after = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        mallory = bearer(rt.tokens, "mallory")
        for suffix, params in (
            ("", {}),
            ("", {"version": "1"}),
            ("", {"as_of": before}),  # before it existed: no different answer either
            ("", {"as_of": after}),
            ("/events", {}),
        ):
            answers = []
            for order_id in (theirs, missing):
                async with http.get(
                    f"{rt.http_url}/api/orders/{order_id}{suffix}", params=params, headers=mallory
                ) as r:
                    answers.append((r.status, (await r.text()).replace(order_id, "ID")))
            assert answers[0] == answers[1], (suffix, params, answers)
            assert answers[0][0] == 404

        async with OrdersGrpcClient(rt.grpc_target, rt.tokens.issue("mallory")) as client:
            outcomes = []
            for order_id in (theirs, missing):
                for call in (
                    client.get_order(order_id),
                    client.get_order(order_id, version=1),
                    client.get_order(order_id, as_of=datetime.now(UTC) - timedelta(days=1)),
                    client.get_order_history(order_id),
                ):
                    with pytest.raises(NotFound) as caught:
                        await call
                    outcomes.append(str(caught.value).replace(order_id, "ID"))
            assert outcomes[:4] == outcomes[4:]
            # A stream of one order: the same NOT_FOUND for both.
            streamed = []
            for order_id in (theirs, missing):
                with pytest.raises(NotFound) as caught:
                    async for _ in client.watch(order_id=order_id, reconnect=False):
                        pass
                streamed.append(str(caught.value).replace(order_id, "ID"))
            assert streamed[0] == streamed[1]


# -- one wording, real currencies -----------------------------------------------------------------


async def test_rest_and_grpc_refuse_bad_input_in_the_same_words(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    settings = Settings(data_dir=tmp_path, broker_url="memory://")
    async with running(ORDERS, settings) as rt:
        cases = [
            ({"email": "not-an-email"}, "user_email"),
            ({"currency": "ZZZ"}, "currency"),  # three letters, no currency
            ({"items": [{"sku": "-bad", "quantity": 1, "unit_price": 5}]}, "items[0].sku"),
        ]
        async with OrdersGrpcClient(rt.grpc_target, rt.tokens.issue("alice")) as client:
            for over, field in cases:
                body = order_body(**over)
                async with http.post(
                    f"{rt.http_url}/api/orders", json=body, headers=bearer(rt.tokens, "alice")
                ) as r:
                    assert r.status == 422
                    rest = {v["field"]: v["description"] for v in (await r.json())["violations"]}
                with pytest.raises(ValidationError) as caught:
                    await client.create_order(body["user_email"], body["currency"], body["items"])
                grpc_said = {v.field: v.description for v in caught.value.violations}
                assert rest[field] == grpc_said[field], (field, rest, grpc_said)
                assert "pattern" not in rest[field] and "^" not in rest[field]  # words, not a regex


# -- secrets and exposure -------------------------------------------------------------------------


def test_the_development_secret_is_refused_beyond_loopback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"ORDERMESH_HTTP_HOST": "0.0.0.0", "ORDERMESH_DATA_DIR": str(tmp_path), "ORDERMESH_HTTP_PORT": "0"}
    assert main(ORDERS, env) == 1
    err = capsys.readouterr().err
    assert err.startswith("orders: ORDERMESH_JWT_SECRET is the development default") and err.count("\n") == 1
    assert not (tmp_path / "orders.db").exists()  # refused before it opened anything
    # `ordermesh up` says the same before it starts anything.
    done = subprocess.run(
        [str(BIN), "up"],
        env={**os.environ, **env, "ORDERMESH_DATA_DIR": str(tmp_path / "up")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "set ORDERMESH_JWT_SECRET to a secret of your own" in done.stdout
    assert not (tmp_path / "up").exists()
    # Loopback, or a secret of one's own, starts.
    assert Settings(http_host="127.0.0.1").loopback_only and Settings(http_host="::1").loopback_only
    Settings(http_host="0.0.0.0", jwt_secret="ours").check_exposure()


def test_tokens_cannot_live_longer_than_the_cap() -> None:
    tokens = Tokens(Settings(jwt_max_ttl_hours=24))
    now = datetime.now(UTC)
    forever = jwt.encode(
        {
            "sub": "eve",
            "iss": "ordermesh",
            "aud": "ordermesh-api",
            "iat": int(now.timestamp()),
            "exp": 10**11,
        },
        DEV_JWT_SECRET,
        algorithm="HS256",
    )
    with pytest.raises(Unauthenticated, match="lives longer"):
        tokens.verify(forever)
    assert tokens.verify(tokens.issue("ann", ttl=timedelta(hours=24))) == "ann"
    with pytest.raises(ValidationError, match="at most 24 hours"):
        tokens.issue("ann", ttl=timedelta(hours=25))


runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["order", "create", "--user", "u", "--email", "u@x.io", "--item", "SKU-1:²:5"], {}, "SKU-1:²:5"),
        (
            ["order", "create", "--user", "a b", "--email", "u@x.io", "--item", "SKU-1:1:5"],
            {},
            "invalid user id",
        ),
        (["token", "ann", "--ttl-hours", "1e20"], {}, "--ttl-hours must be more than 0"),
        (["token", "ann", "--ttl-hours", "nan"], {}, "--ttl-hours must be more than 0"),
        (["token", "ann", "--ttl-hours", "-1"], {}, "--ttl-hours must be more than 0"),
        (["info"], {"ORDERMESH_HTTP_PORT": "abc"}, "ORDERMESH_HTTP_PORT='abc'"),
        (
            ["order", "list", "--user", "u"],
            {"ORDERMESH_DATABASE_URL": "mysql://db/x"},
            "ORDERMESH_DATABASE_URL",
        ),
    ],
)
def test_bad_cli_input_is_one_line_and_exit_2(
    args: list[str], env: dict[str, str], says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORDERMESH_DATA_DIR", str(tmp_path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    done = runner.invoke(cli_app, args)
    assert done.exit_code == 2, done.output
    assert says in done.output and "Traceback" not in done.output
    assert done.exception is None or isinstance(done.exception, SystemExit)


def test_credentials_are_never_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERMESH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ORDERMESH_BROKER_URL", f"amqp://app:{PASSWORD}@mq.internal:5672/")
    monkeypatch.setenv("ORDERMESH_SMTP_URL", f"smtp://mailer:{PASSWORD}@mail.internal:25")
    monkeypatch.setenv("ORDERMESH_DATABASE_URL", f"postgresql://app:{PASSWORD}@127.0.0.1:{free_port()}/x")
    info = runner.invoke(cli_app, ["info", "--json"])
    assert info.exit_code == 0 and PASSWORD not in info.output and "app:***@" in info.output
    failed = runner.invoke(cli_app, ["order", "list", "--user", "u"])  # the database does not answer
    assert failed.exit_code == 1 and "cannot connect to PostgreSQL" in failed.output
    assert PASSWORD not in failed.output


def test_what_we_create_is_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {**os.environ, "ORDERMESH_DATA_DIR": str(data)}
    env.pop("ORDERMESH_DATABASE_URL", None)
    subprocess.run(
        [str(BIN), "order", "create", "--user", "u", "--email", "u@x.io", "--item", "SKU-1:1:5"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "orders.db").stat().st_mode) == 0o600


# -- log lines ------------------------------------------------------------------------------------


def test_a_value_cannot_split_a_log_line_or_leak_a_password() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger("ordermesh.test.safe")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        forged = "m-1\r\n2026-01-01 00:00:00,000 INFO ordermesh [] : forged\u2028line"
        logger.warning(
            "message %s: handled via %s", forged, f"amqp://u:{PASSWORD}@h/", extra={"trace_id": ""}
        )
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert text.count("\n") == 1 and "\\x0d\\x0a" in text and "\\u2028" in text
    assert PASSWORD not in text and "u:***@h" in text
