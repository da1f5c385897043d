"""Messaging: one broker port; in-memory, embedded (SQLite log) and RabbitMQ adapters."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit, urlunsplit

from ordermesh.messaging.port import Broker


async def open_broker(url: str) -> Broker:
    """``memory://``, ``sqlite:///PATH[?lease=SECONDS&poll=SECONDS&delivery_limit=N]`` (embedded,
    no server), or
    ``amqp://user:pass@host:port/vhost[?prefix=NAMESPACE&quorum=1&delivery_limit=N]`` (other
    query parameters go to aio-pika, e.g. ``reconnect_interval``)."""
    if url.startswith("memory://"):
        from ordermesh.messaging.memory import MemoryBroker

        return MemoryBroker()
    if url.startswith("sqlite:///"):
        from ordermesh.messaging.embedded import EmbeddedBroker

        return await EmbeddedBroker.open_url(url)
    if url.startswith(("amqp://", "amqps://")):
        from ordermesh.messaging.rabbitmq import RabbitBroker

        parts = urlsplit(url)
        query = parse_qs(parts.query)
        prefix = query.pop("prefix", [""])[0]
        if prefix and not prefix.endswith((".", "-", "_")):
            prefix += "."  # ?prefix=dev names dev.orders, not devorders
        quorum = query.pop("quorum", ["0"])[0] in {"1", "true", "yes"}
        limit = query.pop("delivery_limit", ["20"])[0]
        if not limit.isdigit() or int(limit) < 1:
            raise ValueError(f"delivery_limit must be a positive integer, not {limit!r}")
        rest = "&".join(f"{k}={v}" for k, values in query.items() for v in values)
        return await RabbitBroker.open(
            urlunsplit(parts._replace(query=rest)), prefix=prefix, quorum=quorum, delivery_limit=int(limit)
        )
    raise ValueError(f"unsupported broker URL {url!r}: use memory://, sqlite:///PATH or amqp://…")


__all__ = ["Broker", "open_broker"]
