"""What every order client offers on top of its one-page call, written once per calling style:
the page's orders alone and every order of a user page by page. A client (REST or gRPC) supplies
``get_user_orders_page``; ``AsyncPages`` or ``SyncPages`` adds the rest."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from typing import Any


class AsyncPages(ABC):
    @abstractmethod
    async def get_user_orders_page(
        self,
        user_id: str,
        limit: int | None = None,
        after: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """``{"orders": [...], "next": CURSOR|None}``: the newest ``limit`` orders of the user (the
        server's default page size unless given), or those older than the page whose ``next``
        cursor is ``after``; ``next`` is None on the last page."""

    async def get_user_orders(
        self,
        user_id: str,
        limit: int | None = None,
        after: str | None = None,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """One page of the user's orders, newest first (``get_user_orders_page`` without the cursor)."""
        return list((await self.get_user_orders_page(user_id, limit, after, timeout))["orders"])

    async def iter_user_orders(
        self, user_id: str, page_size: int | None = None, timeout: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every order of the user, newest first, a page at a time (``timeout`` per page)."""
        after: str | None = None
        while True:
            page = await self.get_user_orders_page(user_id, page_size, after, timeout)
            for order in page["orders"]:
                yield order
            after = page["next"]
            if after is None:
                return


class SyncPages(ABC):
    @abstractmethod
    def get_user_orders_page(
        self,
        user_id: str,
        limit: int | None = None,
        after: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """As ``AsyncPages.get_user_orders_page``, blocking."""

    def get_user_orders(
        self,
        user_id: str,
        limit: int | None = None,
        after: str | None = None,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """One page of the user's orders, newest first (``get_user_orders_page`` without the cursor)."""
        return list(self.get_user_orders_page(user_id, limit, after, timeout)["orders"])

    def iter_user_orders(
        self, user_id: str, page_size: int | None = None, timeout: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every order of the user, newest first, a page at a time (``timeout`` per page)."""
        after: str | None = None
        while True:
            page = self.get_user_orders_page(user_id, page_size, after, timeout)
            yield from page["orders"]
            after = page["next"]
            if after is None:
                return


__all__ = ["AsyncPages", "SyncPages"]
