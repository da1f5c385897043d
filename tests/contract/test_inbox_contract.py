"""The inbox on every backend: one effect per message id, and none when the effect fails."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ordermesh.db import Tx, connect
from ordermesh.messaging.inbox import Inbox, MemoryInbox, SqlInbox


@pytest.fixture
async def inbox(database_url: str) -> AsyncIterator[tuple[Inbox, list[str]]]:
    effects: list[str] = []
    if database_url.startswith("memory://"):
        yield MemoryInbox("mailer"), effects
        return
    db = await connect(database_url)
    await db.execute("CREATE TABLE IF NOT EXISTS sent (id text PRIMARY KEY)")
    yield await SqlInbox.open(db, "mailer"), effects
    await db.close()


async def test_a_duplicate_has_no_second_effect(inbox: tuple[Inbox, list[str]]) -> None:
    box, effects = inbox

    async def effect(tx: Tx | None) -> None:
        effects.append("sent")
        if tx is not None:
            await tx.execute("INSERT INTO sent (id) VALUES ($1)", f"m{len(effects)}")

    assert await box.once("m-1", effect) is True
    assert await box.once("m-1", effect) is False
    assert effects == ["sent"] and await box.seen("m-1")


async def test_a_failed_effect_records_nothing_so_the_retry_runs_it(inbox: tuple[Inbox, list[str]]) -> None:
    box, effects = inbox

    async def boom(tx: Tx | None) -> None:
        if tx is not None:
            await tx.execute("INSERT INTO sent (id) VALUES ('half-done')")
        raise RuntimeError("crash mid-effect")

    with pytest.raises(RuntimeError):
        await box.once("m-2", boom)
    assert not await box.seen("m-2")

    async def ok(tx: Tx | None) -> None:
        effects.append("ok")
        if tx is not None:
            await tx.execute("INSERT INTO sent (id) VALUES ('half-done')")  # the rolled-back row is gone

    assert await box.once("m-2", ok) is True and effects == ["ok"]


async def test_concurrent_duplicates_run_the_effect_once(inbox: tuple[Inbox, list[str]]) -> None:
    box, effects = inbox

    async def effect(tx: Tx | None) -> None:
        await asyncio.sleep(0)  # yield mid-effect, so the duplicates really overlap
        effects.append("x")

    results = await asyncio.gather(*(box.once("m-3", effect) for _ in range(5)))
    assert sorted(results) == [False] * 4 + [True] and effects == ["x"]
