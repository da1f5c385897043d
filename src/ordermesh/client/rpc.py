"""What every async gRPC client of ordermesh shares: one channel, the bearer token, and a
``resilience.Guard`` around each call — its deadline (the call's timeout, or less if the caller
has less time left), retries for idempotent calls within it, the downstream's circuit breaker and
bulkhead.

Each attempt goes out as a gRPC call whose deadline is what is left; a failure comes back as an
``ordermesh.errors`` class (``rpc.status.error_from_rpc``), and whether it is retried is decided by
that class (``resilience.retryable``, widened by a client's ``retryable_errors``). A service passes
the guard of its process for that downstream (``Runtime.guard``), so every client of it shares one
breaker; without one, a client has a guard of its own with the default policy.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, Self, TypeVar

import grpc

from ordermesh import tracing
from ordermesh.client.guard import default_guard
from ordermesh.resilience import Guard, retryable
from ordermesh.rpc.status import error_from_rpc

Response = TypeVar("Response")


class GrpcClient:
    """Base of the async clients: ``async with Client(target, token) as c: await c.method(...)``.
    ``token`` unset: the environment's ORDERMESH_TOKEN; a callable is asked before every call
    (a service's own tokens expire: ``auth.TokenSource`` renews them). ``retries=None`` retries
    until the deadline."""

    downstream = "grpc"  # the guard's name when the client makes its own
    retryable_errors: tuple[type[BaseException], ...] = ()  # retried besides ``resilience.retryable``'s

    def __init__(
        self,
        target: str,
        token: str | Callable[[], str] | None,
        timeout: float,
        retries: int | None,
        guard: Guard | None = None,
    ) -> None:
        token = token if token is not None else os.environ.get("ORDERMESH_TOKEN")  # as the README's shell
        self.timeout = timeout
        self.retries = retries
        self.guard = guard or default_guard(self.downstream, timeout, retries)
        self._token = token
        self.channel = grpc.aio.insecure_channel(
            target, interceptors=tracing.grpc_client_interceptors() or None
        )

    @property
    def _metadata(self) -> tuple[tuple[str, str], ...]:
        token = self._token() if callable(self._token) else self._token
        return (("authorization", f"Bearer {token}"),) if token else ()

    def _retryable(self, exc: BaseException) -> bool:
        return retryable(exc) or isinstance(exc, self.retryable_errors)

    async def _call(
        self,
        method: Callable[..., Awaitable[Response]],
        request: Any,
        timeout: float | None,
        *,
        idempotent: bool = True,
    ) -> Response:
        metadata = self._metadata

        async def attempt(left: float) -> Response:
            try:
                return await method(request, timeout=left, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                raise error_from_rpc(exc) from exc

        return await self.guard.call(
            attempt, timeout=timeout or self.timeout, idempotent=idempotent, is_retryable=self._retryable
        )

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["GrpcClient"]
