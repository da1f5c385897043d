"""What every async gRPC client of ordermesh shares: one channel, the bearer token, a deadline
per call, and retries within it for the codes a client says are safe to retry.

A retried call goes out again with what is left of the same deadline, after a backoff of 50 ms
doubling to 1 s; the last failure comes back as an ``ordermesh.errors`` class
(``rpc.status.error_from_rpc``). ``retries=None`` retries until the deadline.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Self, TypeVar

import grpc

from ordermesh.rpc.status import error_from_rpc

Response = TypeVar("Response")
UNAVAILABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


class GrpcClient:
    """Base of the async clients: ``async with Client(target, token) as c: await c.method(...)``.
    ``token`` unset: the environment's ORDERMESH_TOKEN; a callable is asked before every call
    (a service's own tokens expire: ``auth.TokenSource`` renews them)."""

    retryable: Collection[grpc.StatusCode] = UNAVAILABLE

    def __init__(
        self, target: str, token: str | Callable[[], str] | None, timeout: float, retries: int | None
    ) -> None:
        token = token if token is not None else os.environ.get("ORDERMESH_TOKEN")  # as the README's shell
        self.timeout = timeout
        self.retries = retries
        self._token = token
        self.channel = grpc.aio.insecure_channel(target)

    @property
    def _metadata(self) -> tuple[tuple[str, str], ...]:
        token = self._token() if callable(self._token) else self._token
        return (("authorization", f"Bearer {token}"),) if token else ()

    async def _call(
        self, method: Callable[..., Awaitable[Response]], request: Any, timeout: float | None
    ) -> Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or self.timeout)
        attempt = 0
        while True:
            try:
                return await method(
                    request, timeout=max(deadline - loop.time(), 0.001), metadata=self._metadata
                )
            except grpc.aio.AioRpcError as exc:
                pause = min(0.05 * 2**attempt, 1.0)
                last = self.retries is not None and attempt >= self.retries
                if exc.code() not in self.retryable or last or loop.time() + pause >= deadline:
                    raise error_from_rpc(exc) from exc
            await asyncio.sleep(pause)
            attempt += 1

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["UNAVAILABLE", "GrpcClient"]
