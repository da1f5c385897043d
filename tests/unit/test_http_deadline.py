"""The REST edge honours its caller's deadline (``X-Ordermesh-Deadline-Ms``): the route runs
under it (what it calls gets no more), a route still working when it passes is cut with 504, and
a malformed value is a 422 — driven as ASGI, on the app every service is built from."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from ordermesh.http.app import create_app
from ordermesh.resilience import deadline


async def _ready(_app: Any) -> None:
    return None


def _app() -> Any:
    app = create_app("test", _ready)

    @app.get("/left")
    async def left() -> dict[str, float | None]:
        return {"left": deadline.remaining()}

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        await asyncio.sleep(5)
        return {"done": "late"}

    return app


async def _get(app: Any, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, orjson.loads(body)


async def test_the_route_runs_under_the_callers_deadline() -> None:
    status, doc = await _get(_app(), "/left", {"X-Ordermesh-Deadline-Ms": "1500"})
    assert status == 200 and 1.0 < doc["left"] <= 1.5
    status, doc = await _get(_app(), "/left", {})
    assert status == 200 and doc["left"] is None  # no header: no deadline made up


async def test_work_past_the_deadline_is_cut_with_504() -> None:
    loop = asyncio.get_running_loop()
    began = loop.time()
    status, doc = await _get(_app(), "/slow", {"X-Ordermesh-Deadline-Ms": "100"})
    assert status == 504 and "deadline" in doc["detail"]
    assert loop.time() - began < 2  # cut at the caller's deadline, not the route's 5 s


async def test_a_malformed_deadline_is_a_422_naming_the_header() -> None:
    status, doc = await _get(_app(), "/left", {"X-Ordermesh-Deadline-Ms": "soon"})
    assert status == 422 and "X-Ordermesh-Deadline-Ms" in doc["detail"]
