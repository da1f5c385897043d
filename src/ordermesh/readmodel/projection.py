"""Projections: catch-up subscriptions that keep read models, exactly once.

A projector reads a page of events after its generation's checkpoint, lets the projection change
documents in memory, then commits the documents with the new checkpoint in one transaction, using
compare-and-set on the old checkpoint. A crash between pages replays the page; a second projector
on the same model loses the race and re-reads; nothing is applied twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from ordermesh.eventstore.model import StoredEvent
from ordermesh.eventstore.port import EventStore
from ordermesh.readmodel.port import DocStore

log = logging.getLogger(__name__)


class DocBatch:
    """The documents one page of events touches, decoded once and written once."""

    def __init__(self, docs: DocStore, model: str, generation: int) -> None:
        self._docs, self._model, self._gen = docs, model, generation
        self._cache: dict[str, dict[str, Any] | None] = {}
        self._dirty: set[str] = set()

    async def get(self, key: str) -> dict[str, Any] | None:
        if key not in self._cache:
            raw = await self._docs.get_in(self._model, self._gen, key)
            self._cache[key] = orjson.loads(raw) if raw is not None else None
        return self._cache[key]

    def put(self, key: str, doc: dict[str, Any]) -> None:
        self._cache[key] = doc
        self._dirty.add(key)

    def delete(self, key: str) -> None:
        self._cache[key] = None
        self._dirty.add(key)

    def encoded(self) -> dict[str, bytes | None]:
        out: dict[str, bytes | None] = {}
        for key in self._dirty:
            doc = self._cache[key]
            out[key] = None if doc is None else orjson.dumps(doc)
        return out


class Projection(Protocol):
    """``name`` is the model's; a projection whose documents change shape declares a ``version``
    attribute (1 when absent): a model built by another version is rebuilt at ``catch_up``."""

    name: str

    async def apply(self, event: StoredEvent, docs: DocBatch) -> None: ...


# The document, in a versioned projection's model, naming the version that built it.
VERSION_KEY = "~projection"


Progress = Callable[[int, int], None]


class Projector:
    """Keeps one projection's live generation up to date; rebuilds it beside the live one."""

    def __init__(
        self, store: EventStore, docs: DocStore, projection: Projection, page_size: int = 1000
    ) -> None:
        self.store, self.docs, self.projection = store, docs, projection
        self.page_size = page_size
        self.position = 0
        self._moved = asyncio.Event()
        self._running = False
        self._version_checked = False
        self.failures = 0

    @property
    def name(self) -> str:
        return self.projection.name

    async def _page(self, generation: int, position: int) -> int | None:
        """Apply one page to ``generation`` from ``position``: events applied, or None if the
        checkpoint moved under us (another projector or a swap)."""
        events = await self.store.read_all(position, self.page_size)
        if not events:
            return 0
        batch = DocBatch(self.docs, self.name, generation)
        version = getattr(self.projection, "version", None)
        if position == 0 and version is not None:
            batch.put(VERSION_KEY, {"version": version})
        for event in events:
            await self.projection.apply(event, batch)
        ok = await self.docs.commit(self.name, generation, position, events[-1].position, batch.encoded())
        return len(events) if ok else None

    async def step(self) -> int:
        """Bring the live generation one page closer to the head; returns events applied."""
        state = await self.docs.state(self.name)
        applied = await self._page(state.generation, state.position)
        if applied:
            self._advance(await self.docs.position(self.name, state.generation) or state.position)
        elif applied == 0:
            self._advance(state.position)
        return applied or 0

    def _advance(self, position: int) -> None:
        if position != self.position:
            self.position = position
            self._moved.set()
            self._moved = asyncio.Event()

    async def catch_up(self) -> None:
        await self._rebuild_if_outdated()
        while await self.step():
            pass

    async def _rebuild_if_outdated(self) -> None:
        """After an upgrade that changed the projection's documents, the live model is rebuilt
        once, before anything reads it in the new shape."""
        if self._version_checked:
            return
        built_by = await self._built_by()
        if built_by is not None:
            log.warning("read model %s was built by version %s; rebuilding it", self.name, built_by)
            try:
                await self.rebuild()
            except RuntimeError:
                if await self._built_by() is not None:  # not a twin process's rebuild winning
                    raise
        self._version_checked = True

    async def _built_by(self) -> int | None:
        """The version that built the live model, when it is not this projection's."""
        if (await self.docs.state(self.name)).position == 0:
            return None
        raw = await self.docs.get(self.name, VERSION_KEY)
        built_by = int(orjson.loads(raw)["version"]) if raw is not None else 1
        return None if built_by == getattr(self.projection, "version", 1) else built_by

    async def run(self, stop: asyncio.Event, idle_timeout: float = 1.0) -> None:
        """Follow the store until ``stop`` is set. A failing page is retried with backoff (and
        counted in ``failures``) rather than skipped: a read model must not silently drift."""
        backoff = 0.05
        self._running = True
        while not stop.is_set():
            try:
                if await self.step() == 0:
                    await self.store.wait_for_events(self.position, idle_timeout)
                backoff = 0.05
            except Exception:
                self.failures += 1
                log.exception("projection %s failed at position %s; retrying", self.name, self.position)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def wait_until(self, position: int, timeout: float) -> bool:
        """Wait until this projector has applied ``position`` (read-your-writes for the API).

        A projector nobody runs (a CLI process) catches up inline instead of waiting."""
        if not self._running:
            await self.catch_up()
            return self.position >= position
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.position < position:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._moved.wait(), remaining)
            except TimeoutError:
                return False
        return True

    async def rebuild(self, progress: Progress | None = None) -> int:
        """Replay every event into a new generation, then make it live in one step.

        Reads keep hitting the old generation until the new one has caught up with the head, so
        nobody ever sees a half-built model. Returns the number of events replayed.
        """
        generation = await self.docs.start_generation(self.name)
        position, replayed = 0, 0
        while True:
            head = await self.store.head_position()
            applied = await self._page(generation, position)
            if applied is None:
                raise RuntimeError(f"rebuild of {self.name} lost its generation {generation}")
            if applied == 0 and position >= head:
                break
            replayed += applied
            position = await self.docs.position(self.name, generation) or position
            if progress is not None:
                progress(position, max(head, position))
        await self.docs.activate(self.name, generation)
        return replayed
