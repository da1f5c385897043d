"""Issue 10, HTTP edge: body caps before authentication, slow bodies and slow headers, through
real sockets (the order service as the kit runs it, and the shared app on the kit's listener)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from fastapi import FastAPI, Request
from starlette.responses import Response

from ordermesh.config import Settings
from ordermesh.http.app import create_app
from ordermesh.http.middleware import HttpLimits
from ordermesh.kit.listeners import HttpListener, bind
from ordermesh.kit.testing import running
from ordermesh.services.orders.spec import SPEC

CAP = 1024 * 1024  # ORDERMESH_MAX_BODY_BYTES' default


async def _ready(_: FastAPI) -> None:
    return None


@contextlib.asynccontextmanager
async def orders(tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    settings = Settings(data_dir=tmp_path, broker_url="memory://", database_url="memory://")
    async with running(SPEC, settings) as rt:
        host, _, port = rt.http_url.removeprefix("http://").rpartition(":")
        yield host, int(port)


@contextlib.asynccontextmanager
async def limited_app(limits: HttpLimits) -> AsyncIterator[tuple[str, int, list[int]]]:
    """The shared app with one body-reading route, on the kit's listener; yields what the route
    received (its body sizes)."""
    app = create_app("limits", _ready, limits=limits)
    received: list[int] = []

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        body = await request.body()
        received.append(len(body))
        return Response(str(len(body)))

    listener = HttpListener(app, bind("127.0.0.1", 0, "http_port"), "limits")
    await listener.start()
    try:
        yield "127.0.0.1", listener.port, received
    finally:
        await listener.stop()


async def _response(reader: asyncio.StreamReader, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), timeout)
    return status, headers, body


async def _closed(reader: asyncio.StreamReader, timeout: float) -> bool:
    """Whether the server closed the connection within ``timeout`` seconds."""
    try:
        return await asyncio.wait_for(reader.read(65536), timeout) == b""
    except (TimeoutError, ConnectionResetError):
        return False


async def test_an_oversized_unauthenticated_post_is_413_before_its_body_is_sent(tmp_path: Path) -> None:
    async with orders(tmp_path) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        # 200 MB announced, not a byte of it sent, no token: the answer cannot depend on the body.
        writer.write(
            b"POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 209715200\r\n\r\n"
        )
        await writer.drain()
        status, headers, body = await _response(reader)
        assert status == 413
        assert headers["content-type"] == "application/problem+json"
        assert headers["connection"] == "close"
        problem = orjson.loads(body)
        assert problem["type"].endswith("/content-too-large") and str(CAP) in problem["detail"]
        assert await _closed(reader, 2.0)  # the rest is never read: the connection is closed
        writer.close()

        # One byte over the cap, sent in full: refused the same way; at the cap, it is read (and
        # found to be no JSON).
        for size, expected in ((CAP + 1, 413), (CAP, 422)):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                b"POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {size}\r\n\r\n".encode()
                + b" " * size
            )
            with contextlib.suppress(ConnectionResetError):
                await writer.drain()
            assert (await _response(reader))[0] == expected
            writer.close()


async def test_a_chunked_body_over_the_cap_is_cut_with_413(tmp_path: Path) -> None:
    async with orders(tmp_path) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b" " * 65536
        for _ in range(4 * CAP // len(chunk)):  # no length announced: counted as it comes
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        status, _, body = await _response(reader)
        assert status == 413 and orjson.loads(body)["type"].endswith("/content-too-large")
        writer.close()


async def test_a_trickling_body_is_cut_with_408_and_a_whole_one_is_read() -> None:
    async with limited_app(HttpLimits(body_timeout=0.5, header_timeout=30)) as (host, port, received):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        await writer.drain()
        started = time.monotonic()
        status, headers, body = await _response(reader)
        assert status == 408 and orjson.loads(body)["type"].endswith("/request-timeout")
        assert headers["connection"] == "close" and time.monotonic() - started < 3
        assert await _closed(reader, 2.0)
        assert received == []  # the route never saw a body
        writer.close()

        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        assert (await _response(reader))[0] == 200 and received == [3]
        writer.close()


async def test_connections_that_trickle_their_headers_are_closed() -> None:
    async with limited_app(HttpLimits(header_timeout=0.5)) as (host, port, _):
        connections = [await asyncio.open_connection(host, port) for _ in range(50)]
        for _, writer in connections:
            writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        await asyncio.gather(*(w.drain() for _, w in connections))
        started = time.monotonic()
        closed = await asyncio.gather(*(_closed(r, 3.0) for r, _ in connections))
        assert all(closed) and time.monotonic() - started < 3
        for _, writer in connections:
            writer.close()

        # A kept-alive connection gets the same deadline for its next request's head.
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await _response(reader))[0] == 200
        writer.write(b"GET /livez HTTP/1.1\r\n")
        assert await _closed(reader, 3.0)
        writer.close()


async def test_a_request_head_over_16_kib_is_refused() -> None:
    async with limited_app(HttpLimits()) as (host, port, _):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        await writer.drain()
        status, _, body = await _response(reader)
        assert status == 431 and orjson.loads(body)["type"].endswith("/headers-too-large")
        writer.close()

        # Arriving in parts, h11 itself stops it at the same size.
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"a" * 10_000 + b"\r\n\r\n")
        assert (await _response(reader))[0] in (400, 431)
        writer.close()


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_requests_within_the_limits_pass(method: str) -> None:
    async with limited_app(HttpLimits(max_body_bytes=10)) as (host, port, received):
        reader, writer = await asyncio.open_connection(host, port)
        path = b"/livez" if method == "GET" else b"/echo"
        extra = b"Content-Length: 10\r\n\r\n0123456789" if method == "POST" else b"\r\n"
        writer.write(method.encode() + b" " + path + b" HTTP/1.1\r\nHost: x\r\n" + extra)
        assert (await _response(reader))[0] == 200
        assert received == ([10] if method == "POST" else [])
        writer.close()
