"""The fast path's seam: the version check, the switches, the stock publisher, and the layout
that keeps the fast modules optional (the broker runs on the stock path without them)."""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pamqp.commands import Basic

from ordermesh.config import Settings
from ordermesh.messaging.rabbitmq import fastpath
from ordermesh.messaging.rabbitmq.wire import Item, StockPublisher, StockWire

PACKAGE = Path(fastpath.__file__).parent
VERIFIED_VERSIONS = {"aiormq": "7.2.4", "pamqp": "4.0.1"}


def test_the_verified_versions_get_the_fast_wire() -> None:
    wire = fastpath.install(versions=VERIFIED_VERSIONS)
    from ordermesh.messaging.rabbitmq.properties import WireProperties

    assert wire.fast and wire.properties is WireProperties
    assert fastpath.install(versions={"aiormq": "7.2.0", "pamqp": "4.0.9"}) is wire  # any patch release


@pytest.mark.parametrize(
    ("versions", "named"),
    [
        ({"aiormq": "7.3.0", "pamqp": "4.0.1"}, "aiormq 7.3.0 (verified on 7.2.x)"),
        ({"aiormq": "7.2.4", "pamqp": "4.1.0"}, "pamqp 4.1.0 (verified on 4.0.x)"),
        ({"aiormq": "7.2.4", "pamqp": "unknown"}, "pamqp unknown (verified on 4.0.x)"),
    ],
)
def test_other_versions_get_the_stock_wire_and_one_warning(
    versions: dict[str, str], named: str, caplog: pytest.LogCaptureFixture
) -> None:
    fastpath._warned.discard(tuple(sorted(versions.items())))
    with caplog.at_level(logging.WARNING, "ordermesh.messaging.rabbitmq"):
        first = fastpath.install(versions=versions)
        second = fastpath.install(versions=versions)  # a second broker in the process
    assert first is second is fastpath.STOCK and not first.fast
    assert first.properties is Basic.Properties
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert named in warnings[0] and "stock path" in warnings[0]


def test_switched_off_it_is_the_stock_wire_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "ordermesh.messaging.rabbitmq"):
        assert fastpath.install(False, versions=VERIFIED_VERSIONS) is fastpath.STOCK
        assert fastpath.install(False, versions={"aiormq": "7.9.9", "pamqp": "4.9.9"}) is fastpath.STOCK
    assert caplog.records == []


def test_a_missing_distribution_reads_as_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert fastpath.installed_versions() == {"aiormq": "unknown", "pamqp": "unknown"}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://h/", ("amqp://h/", None)),
        ("amqp://h/?prefix=t.&quorum=1", ("amqp://h/?prefix=t.&quorum=1", None)),
        ("amqp://h/?fast_path=0", ("amqp://h/", False)),
        (
            "amqp://h/?prefix=t.&fast_path=false&reconnect_interval=0.2",
            ("amqp://h/?prefix=t.&reconnect_interval=0.2", False),
        ),
        ("amqp://u:p%40ss@h:5672/vh?fast_path=1", ("amqp://u:p%40ss@h:5672/vh", True)),
        ("amqp://h/?fast_path=0&fast_path=yes", ("amqp://h/", True)),  # the last one counts
    ],
)
def test_the_url_switch(url: str, expected: tuple[str, bool | None]) -> None:
    assert fastpath.from_url(url) == expected


def test_a_url_switch_that_is_neither_on_nor_off_is_refused() -> None:
    with pytest.raises(ValueError, match="fast_path must be 1 or 0"):
        fastpath.from_url("amqp://h/?fast_path=maybe")


@pytest.mark.parametrize(
    ("broker_url", "setting", "expected"),
    [
        ("amqp://h/", True, "amqp://h/"),
        ("amqp://h/", False, "amqp://h/?fast_path=0"),
        ("amqp://h/?prefix=t.", False, "amqp://h/?prefix=t.&fast_path=0"),
        ("amqp://h/?fast_path=1", False, "amqp://h/?fast_path=1"),  # the URL wins
        ("memory://", False, "memory://"),
    ],
)
def test_the_setting_reaches_the_broker_through_its_url(
    broker_url: str, setting: bool, expected: str
) -> None:
    settings = Settings(broker_url=broker_url, rabbitmq_fast_path=setting)
    assert settings.effective_broker_url == expected


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERMESH_RABBITMQ_FAST_PATH", "0")
    assert Settings().rabbitmq_fast_path is False


# --- the stock publisher, on a stand-in channel ---------------------------------------------


class Channel:
    """aiormq's ``basic_publish`` as seen from outside: confirmed when the test says so."""

    def __init__(self) -> None:
        self.sent: list[str] = []  # routing keys, in the order they were written
        self.confirms: dict[str, asyncio.Future[object]] = {}

    async def basic_publish(self, body: bytes, **kw: Any) -> object:
        assert kw["mandatory"] is True
        self.sent.append(kw["routing_key"])
        future = self.confirms[kw["routing_key"]] = asyncio.get_running_loop().create_future()
        return await future


def items(*keys: str, message_id: str | None = None) -> list[Item]:
    return [(b"{}", Basic.Properties(message_id=message_id or key), key) for key in keys]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_the_stock_publisher_keeps_order_and_its_window() -> None:
    channel = Channel()
    publisher = StockPublisher(window=2)

    async def channel_of() -> Any:
        return channel

    first = asyncio.create_task(publisher.publish(channel_of, "orders", items("a", "b", "c")))
    second = asyncio.create_task(publisher.publish(channel_of, "orders", items("d")))
    await settle()
    assert channel.sent == ["a", "b"]  # two confirms outstanding: the window is full
    channel.confirms["b"].set_result("ack")
    await settle()
    assert channel.sent == ["a", "b", "c"]  # in call order: d waits behind the first call
    channel.confirms["a"].set_result("ack")
    await settle()
    assert channel.sent == ["a", "b", "c", "d"]
    confirmations = await first
    assert [key for _future, key in confirmations] == ["a", "b", "c"]
    channel.confirms["c"].set_exception(RuntimeError("returned"))
    channel.confirms["d"].set_result("ack")
    results = await asyncio.gather(*(f for f, _ in confirmations), return_exceptions=True)
    assert results[:2] == ["ack", "ack"] and isinstance(results[2], RuntimeError)
    assert [key for _future, key in await second] == ["d"]


async def test_the_stock_publisher_holds_a_message_id_until_it_is_settled() -> None:
    # aiormq matches a returned message to its publish by message id: two in flight would mix up.
    channel = Channel()
    publisher = StockPublisher(window=10)

    async def channel_of() -> Any:
        return channel

    task = asyncio.create_task(publisher.publish(channel_of, "orders", items("x", "y", message_id="same")))
    await settle()
    assert channel.sent == ["x"]
    channel.confirms["x"].set_result("ack")
    await settle()
    assert channel.sent == ["x", "y"]
    channel.confirms["y"].set_result("ack")
    assert len(await task) == 2


async def test_the_stock_wire_consumes_through_aiormq() -> None:
    calls: list[tuple[str, str]] = []

    class Raw:
        async def basic_consume(self, queue: str, consumer: Any, *, consumer_tag: str) -> None:
            calls.append((queue, consumer_tag))

    async def consumer(delivered: Any) -> None:
        return None

    await StockWire().consume(Raw(), "t.q", "tag-1", consumer)  # type: ignore[arg-type]
    assert calls == [("t.q", "tag-1")]


# --- the layout ------------------------------------------------------------------------------

FAST_MODULES = ("frames", "tap", "publisher", "properties")


def test_without_the_fast_modules_the_adapter_still_imports_and_runs_stock() -> None:
    """What an aiormq or pamqp whose internals moved would do to the fast modules: fail to
    import. The adapter must not need them unless ``install`` picks the fast wire."""
    blocked = [f"ordermesh.messaging.rabbitmq.{name}" for name in FAST_MODULES]
    script = f"""
import sys
from importlib.abc import MetaPathFinder

class Block(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in {blocked!r}:
            raise ImportError(f"{{name}} blocked by the test")
        return None

sys.meta_path.insert(0, Block())
from ordermesh.messaging.rabbitmq import RabbitBroker, fastpath
wire = fastpath.install(versions={{"aiormq": "7.9.0", "pamqp": "4.0.1"}})
assert not wire.fast, wire
assert not any(name in sys.modules for name in {blocked!r})
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def _imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    prefix = "ordermesh.messaging.rabbitmq."
    return {name[len(prefix) :].split(".")[0] for name in found if name.startswith(prefix)}


def test_the_subscription_does_not_reach_back_into_the_broker() -> None:
    # Everything the subscription imports, directly or not (TYPE_CHECKING imports included).
    seen, todo = set(), ["subscription"]
    while todo:
        module = todo.pop()
        if module not in seen and (PACKAGE / f"{module}.py").exists():
            seen.add(module)
            todo += _imports(module)
    assert "broker" not in seen
    assert not seen & set(FAST_MODULES)  # nor into the fast path: the wire stands between
