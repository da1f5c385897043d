"""The inbox on every backend: one effect per message id, and none when the effect fails.

To check an adapter, subclass ``InboxContract`` and give the subclass a ``database_url`` fixture: a
fresh database for each test (``memory://`` is the ``MemoryInbox``, any other URL is connected with
``ordermesh.db.connect`` for a ``SqlInbox``). ``OnMemory``, ``OnSqlite`` and ``OnPostgres``
(``tests.helpers``) give the built-in ones. An adapter no URL names overrides the ``inbox`` fixture
instead, to hand each test an ``Inbox`` and the list its effects append to.

    class TestSqliteInbox(OnSqlite, InboxContract):
        pass
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator

import pytest

from ordermesh.db import Tx, connect
from ordermesh.messaging.inbox import Effect, Inbox, MemoryInbox, SqlInbox

current_user: contextvars.ContextVar[str] = contextvars.ContextVar("current_user", default="nobody")


class InboxContract:
    """Every test an Inbox adapter must pass; a subclass gives ``database_url``."""

    @pytest.fixture
    async def inbox(self, database_url: str) -> AsyncIterator[tuple[Inbox, list[str]]]:
        effects: list[str] = []
        if database_url.startswith("memory://"):
            yield MemoryInbox("mailer"), effects
            return
        db = await connect(database_url)
        await db.execute("CREATE TABLE IF NOT EXISTS sent (id text PRIMARY KEY)")
        yield await SqlInbox.open(db, "mailer"), effects
        await db.close()

    async def test_a_duplicate_has_no_second_effect(self, inbox: tuple[Inbox, list[str]]) -> None:
        box, effects = inbox

        async def effect(tx: Tx | None) -> None:
            effects.append("sent")
            if tx is not None:
                await tx.execute("INSERT INTO sent (id) VALUES ($1)", f"m{len(effects)}")

        assert await box.once("m-1", effect) is True
        assert await box.once("m-1", effect) is False
        assert effects == ["sent"] and await box.seen("m-1")

    async def test_a_failed_effect_records_nothing_so_the_retry_runs_it(
        self, inbox: tuple[Inbox, list[str]]
    ) -> None:
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

    async def test_concurrent_duplicates_run_the_effect_once(self, inbox: tuple[Inbox, list[str]]) -> None:
        box, effects = inbox

        async def effect(tx: Tx | None) -> None:
            await asyncio.sleep(0)  # yield mid-effect, so the duplicates really overlap
            effects.append("x")

        results = await asyncio.gather(*(box.once("m-3", effect) for _ in range(5)))
        assert sorted(results) == [False] * 4 + [True] and effects == ["x"]

    async def test_concurrent_messages_each_get_their_own_outcome(
        self, inbox: tuple[Inbox, list[str]], database_url: str
    ) -> None:
        """Many messages at once (a consumer's prefetch): one failing effect takes its own claim and
        writes back with it, and nothing of its neighbours."""
        box, effects = inbox

        def effect_for(n: int) -> Effect:
            async def effect(tx: Tx | None) -> None:
                if tx is not None:
                    await tx.execute("INSERT INTO sent (id) VALUES ($1)", f"row-{n}")
                await asyncio.sleep(0)
                if n == 7:
                    raise RuntimeError("message 7 fails")
                effects.append(f"m{n}")

            return effect

        results = await asyncio.gather(
            *(box.once(f"m{n}", effect_for(n)) for n in range(20)), return_exceptions=True
        )
        assert [r for r in results if r is not True] == [results[7]] and isinstance(results[7], RuntimeError)
        assert sorted(effects) == sorted(f"m{n}" for n in range(20) if n != 7)
        assert [await box.seen(f"m{n}") for n in range(20)] == [n != 7 for n in range(20)]
        if not database_url.startswith("memory://"):
            db = box.db  # type: ignore[attr-defined]
            rows = {r[0] for r in await db.fetch("SELECT id FROM sent")}
            assert rows == {f"row-{n}" for n in range(20) if n != 7}
        assert await box.once("m7", effect_for(27)) is True  # the retry runs (another effect here)

    async def test_the_effect_runs_in_its_callers_context(self, inbox: tuple[Inbox, list[str]]) -> None:
        box, effects = inbox

        async def effect(tx: Tx | None) -> None:
            effects.append(current_user.get())

        async def call(user: str) -> bool:
            current_user.set(user)
            return await box.once(f"from-{user}", effect)

        assert await asyncio.gather(call("ann"), call("bob")) == [True, True]
        assert sorted(effects) == ["ann", "bob"]
