"""Async client of the shipping service's REST API (aiohttp; no FastAPI, no server code).

Every call has a timeout, covering its retries, and sends what is left of it as
``X-Ordermesh-Deadline-Ms``. All three calls are idempotent by order id, so connection failures and
5xx answers (``InfrastructureError``) are retried with jittered backoff: a schedule whose answer was
lost is answered again with the same shipment (200), a cancel again with the same cancelled one.
Calls go through the shipping circuit breaker and bulkhead (a ``resilience.Guard``: pass the
process's own, ``Runtime.guard("shipping")``, to share it). Problem documents come back as the
``ordermesh.errors`` classes the server raised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from ordermesh import errors, tracing
from ordermesh.problems import error_from_problem
from ordermesh.resilience import Guard, Policy, RetryPolicy, deadline
from ordermesh.resilience.deadline import DEADLINE_HEADER


@dataclass(frozen=True, slots=True)
class ShipmentItem:
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Address:
    name: str
    line1: str
    city: str
    postal_code: str
    country: str  # ISO 3166-1 alpha-2
    line2: str | None = None


@dataclass(frozen=True, slots=True)
class Shipment:
    shipment_id: str
    order_id: str
    tracking_id: str | None  # None: cancelled before it was ever scheduled
    status: str  # "scheduled" | "cancelled"
    items: tuple[ShipmentItem, ...]
    address: Address | None
    scheduled_at: datetime | None
    cancelled_at: datetime | None


def _time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


def _shipment(doc: Mapping[str, Any]) -> Shipment:
    a = doc.get("address")
    return Shipment(
        shipment_id=str(doc["shipment_id"]),
        order_id=str(doc["order_id"]),
        tracking_id=doc.get("tracking_id"),
        status=str(doc["status"]),
        items=tuple(ShipmentItem(str(i["sku"]), int(i["quantity"])) for i in doc.get("items") or []),
        address=None
        if a is None
        else Address(a["name"], a["line1"], a["city"], a["postal_code"], a["country"], a.get("line2")),
        scheduled_at=_time(doc.get("scheduled_at")),
        cancelled_at=_time(doc.get("cancelled_at")),
    )


def _items(items: Iterable[ShipmentItem | tuple[str, int]]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        sku, quantity = (item.sku, item.quantity) if isinstance(item, ShipmentItem) else item
        out.append({"sku": sku, "quantity": quantity})
    return out


class ShippingClient:
    """``token`` is a service token, or a function giving a fresh one per call (service tokens
    expire after an hour). Use ``async with`` or call ``close()``."""

    def __init__(
        self,
        base_url: str,
        token: str | Callable[[], str],
        *,
        timeout: float = 5.0,
        retries: int = 3,
        guard: Guard | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.guard = guard or Guard(
            "shipping", Policy(timeout=timeout, retry=RetryPolicy(attempts=retries + 1))
        )
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    async def schedule(
        self,
        order_id: str,
        items: Iterable[ShipmentItem | tuple[str, int]],
        address: Address | None = None,
        *,
        timeout: float | None = None,
    ) -> Shipment:
        body: dict[str, Any] = {"order_id": order_id, "items": _items(items)}
        if address is not None:
            body["address"] = {
                "name": address.name,
                "line1": address.line1,
                "line2": address.line2,
                "city": address.city,
                "postal_code": address.postal_code,
                "country": address.country,
            }
        return _shipment(await self._send("POST", "/api/shipments", orjson.dumps(body), timeout=timeout))

    async def get(self, order_id: str, *, timeout: float | None = None) -> Shipment:
        return _shipment(
            await self._send("GET", f"/api/shipments/{quote(order_id, safe='')}", timeout=timeout)
        )

    async def cancel(self, order_id: str, *, timeout: float | None = None) -> Shipment:
        path = f"/api/shipments/{quote(order_id, safe='')}/cancel"
        return _shipment(await self._send("POST", path, timeout=timeout))

    async def _send(
        self, method: str, path: str, body: bytes | None = None, *, timeout: float | None = None
    ) -> Any:
        session = self._open()
        url = self.base_url + path

        async def attempt(left: float) -> Any:
            token = self._token() if callable(self._token) else self._token
            # The callee learns how long its caller will wait (``resilience.deadline``).
            headers = {"Authorization": f"Bearer {token}", DEADLINE_HEADER: deadline.to_header(left)}
            if body is not None:
                headers["Content-Type"] = "application/json"
            try:
                async with session.request(
                    method, url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=left)
                ) as r:
                    status, payload = r.status, await r.read()
            except TimeoutError as exc:
                raise errors.InfrastructureError(f"{method} {path}: no answer within {left:.2f} s") from exc
            except aiohttp.ClientError as exc:
                raise errors.InfrastructureError(f"{method} {path}: {exc or type(exc).__name__}") from exc
            if status < 400:
                return orjson.loads(payload)
            raise error_from_problem(status, payload)

        return await self.guard.call(attempt, timeout=timeout or self.timeout)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(trace_configs=tracing.http_trace_configs())
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> ShippingClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


__all__ = ["Address", "Shipment", "ShipmentItem", "ShippingClient"]
