"""Python clients for the order API: ``OrdermeshClient`` (sync, urllib3) and
``AsyncOrdermeshClient`` (aiohttp).

Both call through a ``resilience.Guard`` (pass ``guard`` to share or tune it): every call has a
deadline (5 s unless told otherwise, sent on as ``X-Ordermesh-Deadline-Ms``), idempotent calls are
retried on connection failures and 502/503/504 with jittered backoff within it, and a circuit
breaker and a bulkhead stand in front of the server. ``create_order`` sends an Idempotency-Key
(generated when not given) so its retries cannot create a second order, and problem documents come
back as the ``ordermesh.errors`` classes the server raised.
(aiohttp rather than httpx: httpx stalls under concurrency on these machines; see bench/.)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast
from urllib.parse import quote, urlencode

import aiohttp
import orjson
import urllib3

from ordermesh import errors, tracing
from ordermesh.client.guard import default_guard
from ordermesh.client.surface import AsyncPages, SyncPages
from ordermesh.problems import error_from_problem
from ordermesh.resilience import Guard, deadline
from ordermesh.resilience.deadline import DEADLINE_HEADER

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    body: bytes | None = None
    headers: Mapping[str, str] | None = None
    retry: bool = True
    field: str | None = None  # the member of the JSON answer the caller wants


def _user_orders(user_id: str, limit: int | None, after: str | None) -> _Request:
    query = urlencode({k: v for k, v in {"limit": limit, "after": after}.items() if v is not None})
    path = f"/api/users/{quote(user_id, safe='')}/orders" + (f"?{query}" if query else "")
    return _Request("GET", path)


def _order_events(order_id: str) -> _Request:
    return _Request("GET", f"/api/orders/{quote(order_id, safe='')}/events", field="events")


def _decode(req: _Request, status: int, body: bytes) -> Any:
    if status >= 400:
        raise error_from_problem(status, body)
    doc: Any = orjson.loads(body) if body else None
    return doc[req.field] if req.field else doc


def _order_request(
    user_email: str, currency: str, items: Sequence[Mapping[str, Any]], key: str | None
) -> _Request:
    body = orjson.dumps({"user_email": user_email, "currency": currency, "items": list(items)})
    headers = {"Content-Type": "application/json", "Idempotency-Key": key or str(uuid.uuid4())}
    return _Request("POST", "/api/orders", body, headers)


def _order(order_id: str, version: int | None, as_of: datetime | None) -> _Request:
    query = {
        k: v for k, v in {"version": version, "as_of": as_of.isoformat() if as_of else None}.items() if v
    }
    return _Request(
        "GET", f"/api/orders/{quote(order_id, safe='')}" + (f"?{urlencode(query)}" if query else "")
    )


def _no_answer(req: _Request, left: float) -> errors.InfrastructureError:
    return errors.InfrastructureError(f"{req.method} {req.path}: no answer within {left:.2f} s")


class _Base:
    def __init__(
        self, base_url: str | None, token: str | None, timeout: float, retries: int, guard: Guard | None
    ) -> None:
        # Unset: the environment's ORDERMESH_URL and ORDERMESH_TOKEN, as the README's shell shows.
        token = token if token is not None else os.environ.get("ORDERMESH_TOKEN")
        self.base_url = (base_url or os.environ.get("ORDERMESH_URL") or DEFAULT_URL).rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.guard = guard or default_guard("orders", timeout, retries)
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}

    def _headers(self, req: _Request, left: float) -> dict[str, str]:
        return {**self._auth, **(req.headers or {}), DEADLINE_HEADER: deadline.to_header(left)}


class OrdermeshClient(_Base, SyncPages):
    """The blocking twin of ``AsyncOrdermeshClient``; safe to share between threads."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        timeout: float = 5.0,
        retries: int = 2,
        *,
        guard: Guard | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout, retries, guard)
        self._pool = urllib3.PoolManager(maxsize=8, retries=False)

    def _send(self, req: _Request, timeout: float | None) -> Any:
        def attempt(left: float) -> Any:
            try:
                r = self._pool.request(
                    req.method,
                    self.base_url + req.path,
                    body=req.body,
                    headers=self._headers(req, left),
                    timeout=left,
                )
            except urllib3.exceptions.TimeoutError as exc:
                raise _no_answer(req, left) from exc
            except urllib3.exceptions.HTTPError as exc:
                raise errors.InfrastructureError(f"{req.method} {req.path}: {exc}") from exc
            return _decode(req, r.status, r.data)

        return self.guard.call_blocking(attempt, timeout=timeout or self.timeout, idempotent=req.retry)

    def get_user_orders_page(
        self,
        user_id: str,
        limit: int | None = None,
        after: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """``{"orders": [...], "next": CURSOR|None}``: as ``get_user_orders``, with the cursor."""
        return cast(dict[str, Any], self._send(_user_orders(user_id, limit, after), timeout))

    def get_order(
        self,
        order_id: str,
        *,
        version: int | None = None,
        as_of: datetime | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        return cast(dict[str, Any], self._send(_order(order_id, version, as_of), timeout))

    def get_order_events(self, order_id: str, timeout: float | None = None) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._send(_order_events(order_id), timeout))

    def create_order(
        self,
        user_email: str,
        currency: str,
        items: Sequence[Mapping[str, Any]],
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        return cast(
            dict[str, Any], self._send(_order_request(user_email, currency, items, idempotency_key), timeout)
        )

    def close(self) -> None:
        self._pool.clear()

    def __enter__(self) -> OrdermeshClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncOrdermeshClient(_Base, AsyncPages):
    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        timeout: float = 5.0,
        retries: int = 2,
        *,
        guard: Guard | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout, retries, guard)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100), trace_configs=tracing.http_trace_configs()
            )
        return self._session

    async def _send(self, req: _Request, timeout: float | None) -> Any:
        async def attempt(left: float) -> Any:
            try:
                async with self._http().request(
                    req.method,
                    self.base_url + req.path,
                    data=req.body,
                    headers=self._headers(req, left),
                    timeout=aiohttp.ClientTimeout(total=left),
                ) as r:
                    status, body = r.status, await r.read()
            except TimeoutError as exc:
                raise _no_answer(req, left) from exc
            except aiohttp.ClientError as exc:
                raise errors.InfrastructureError(f"{req.method} {req.path}: {exc!r}") from exc
            return _decode(req, status, body)

        return await self.guard.call(attempt, timeout=timeout or self.timeout, idempotent=req.retry)

    async def get_user_orders_page(
        self,
        user_id: str,
        limit: int | None = None,
        after: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """``{"orders": [...], "next": CURSOR|None}``: as ``get_user_orders``, with the cursor."""
        req = _user_orders(user_id, limit, after)
        return cast(dict[str, Any], await self._send(req, timeout))

    async def get_order(
        self,
        order_id: str,
        *,
        version: int | None = None,
        as_of: datetime | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        return cast(dict[str, Any], await self._send(_order(order_id, version, as_of), timeout))

    async def get_order_events(self, order_id: str, timeout: float | None = None) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], await self._send(_order_events(order_id), timeout))

    async def create_order(
        self,
        user_email: str,
        currency: str,
        items: Sequence[Mapping[str, Any]],
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        req = _order_request(user_email, currency, items, idempotency_key)
        return cast(dict[str, Any], await self._send(req, timeout))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncOrdermeshClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
