"""The RabbitMQ fast path behind one seam: ``install`` picks the ``Wire`` a broker runs on.

The fast path reaches under aiormq's and pamqp's public API: ``frames`` replaces aiormq's frame
reader and builds pamqp's objects without their constructors, ``tap`` stands in for a channel's
frame queue, ``publisher`` fills a channel's confirmation bookkeeping itself and ``properties``
marshals pamqp's ``Basic.Properties`` from its field layout. Each was checked against the
stock path (byte for byte in ``tests/unit/test_rabbitmq_frames.py``; the broker contract suite
and the adapter tests in both modes) on the minor versions in ``VERIFIED``, where it publishes
and consumes ~2.5x faster (``docs/benchmarks.md``).

``install`` compares the installed aiormq and pamqp with ``VERIFIED``: the same minor versions
get ``FastWire``, and only then are the fast modules imported; other versions get ``StockWire``
(aiormq's public API alone, see ``wire``) and one warning per process. So ``pyproject.toml``
allows any aiormq 7 and pamqp 4: an upgrade costs speed until the fast path is verified on it,
never correctness. ``?fast_path=0`` on the broker URL (``from_url``; it wins) or
``ORDERMESH_RABBITMQ_FAST_PATH=0`` turns it off without a warning. Both wires can serve brokers
in one process: the frame reader is chosen per connection.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Final

from aiormq.abc import AbstractChannel as RawChannel
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from ordermesh.messaging.rabbitmq.wire import Consumer, Publisher, StockWire, Wire

log = logging.getLogger("ordermesh.messaging.rabbitmq")

# The minor versions the fast path was verified on; move them only after the unit tests of
# frames and properties, the broker contract suite and the adapter tests pass on the new ones.
VERIFIED: Final[Mapping[str, str]] = {"aiormq": "7.2", "pamqp": "4.0"}
URL_PARAMETER: Final = "fast_path"
_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"0", "false", "no", "off"})
_warned: set[tuple[tuple[str, str], ...]] = set()  # version sets warned about (once per process)

STOCK: Final = StockWire()


class FastWire:
    """The hand-written hot path. Built by ``install`` alone: its modules are imported here."""

    fast = True

    def __init__(self) -> None:
        from ordermesh.messaging.rabbitmq import frames, properties, publisher, tap

        frames.install()
        self.properties: type[Basic.Properties] = properties.WireProperties
        self._fast_frames = frames.fast_frames
        self._pipeline = publisher.Pipeline
        self._tap = tap.DeliveryTap

    def connecting(self) -> AbstractContextManager[None]:
        return self._fast_frames()

    def publisher(self, window: int) -> Publisher:
        return self._pipeline(window)

    async def consume(self, channel: RawChannel, queue: str, consumer_tag: str, consumer: Consumer) -> None:
        tasks: set[asyncio.Task[None]] = set()  # the loop holds tasks weakly

        def spawn(delivered: DeliveredMessage) -> None:
            # The tap calls this in delivery order, so the tasks start in delivery order.
            task = asyncio.get_running_loop().create_task(consumer(delivered))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        # In place, under the tag chosen by the caller, before the first delivery can arrive:
        # no delivery of this consumer takes aiormq's road instead (``tap``).
        self._tap.on(channel).add(consumer_tag, spawn)
        await channel.basic_consume(queue, consumer, consumer_tag=consumer_tag)


def installed_versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in VERIFIED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def unverified(versions: Mapping[str, str]) -> list[str]:
    """The packages of ``versions`` off the verified minor versions, described."""
    return [
        f"{name} {versions.get(name, 'unknown')} (verified on {minor}.x)"
        for name, minor in VERIFIED.items()
        if _minor(versions.get(name, "unknown")) != minor
    ]


@functools.cache
def _fast_wire() -> FastWire:
    return FastWire()


def install(enabled: bool = True, *, versions: Mapping[str, str] | None = None) -> Wire:
    """The wire for a broker: the fast one if ``enabled`` and aiormq and pamqp (``versions``,
    default: the installed ones) are those it was verified on, else aiormq's stock path."""
    if not enabled:
        return STOCK
    found = dict(installed_versions() if versions is None else versions)
    off = unverified(found)
    if not off:
        return _fast_wire()
    key = tuple(sorted(found.items()))
    if key not in _warned:
        _warned.add(key)
        log.warning(
            "RabbitMQ fast path off: %s; publishing and consuming on aiormq's stock path, correct "
            "but ~2.5x slower. Install the verified versions to get it back, or set "
            "ORDERMESH_RABBITMQ_FAST_PATH=0 to choose the stock path without this warning",
            ", ".join(off),
        )
    return STOCK


def from_url(url: str) -> tuple[str, bool | None]:
    """``url`` without its ``fast_path`` query parameter, and that parameter (None: absent).
    Other parameters are kept as written."""
    scheme_host, sep, rest = url.partition("?")
    query, hash_, fragment = rest.partition("#")
    kept: list[str] = []
    value: bool | None = None
    for pair in query.split("&") if sep else []:
        name, _eq, raw = pair.partition("=")
        if name != URL_PARAMETER:
            kept.append(pair)
        elif raw.lower() in _ON:
            value = True
        elif raw.lower() in _OFF:
            value = False
        else:
            raise ValueError(f"{URL_PARAMETER} must be 1 or 0, not {raw!r}")
    if value is None:
        return url, None
    query = "&".join(p for p in kept if p)
    return f"{scheme_host}{'?' if query else ''}{query}{hash_}{fragment}", value


__all__ = ["STOCK", "URL_PARAMETER", "VERIFIED", "FastWire", "from_url", "install", "installed_versions"]
