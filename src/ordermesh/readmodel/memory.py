"""In-memory document store with the same generation and compare-and-set rules as SQL."""

from __future__ import annotations

import bisect
from collections.abc import Mapping

from ordermesh.readmodel.port import ModelState


class MemoryDocStore:
    def __init__(self) -> None:
        self._docs: dict[tuple[str, int], dict[str, bytes]] = {}
        self._keys: dict[tuple[str, int], list[str]] = {}  # each generation's keys, sorted, for scan
        self._positions: dict[tuple[str, int], int] = {}
        self._live: dict[str, int] = {}

    def _ensure(self, model: str) -> int:
        if model not in self._live:
            self._live[model] = 1
            self._positions[(model, 1)] = 0
            self._docs[(model, 1)] = {}
            self._keys[(model, 1)] = []
        return self._live[model]

    async def get(self, model: str, key: str) -> bytes | None:
        return self._docs.get((model, self._ensure(model)), {}).get(key)

    async def get_in(self, model: str, generation: int, key: str) -> bytes | None:
        return self._docs.get((model, generation), {}).get(key)

    async def scan(
        self, model: str, prefix: str, after: str | None = None, limit: int = 100
    ) -> list[tuple[str, bytes]]:
        gen = (model, self._ensure(model))
        keys, docs = self._keys[gen], self._docs[gen]
        if after is not None and after >= prefix:
            i = bisect.bisect_right(keys, after)
        else:
            i = bisect.bisect_left(keys, prefix)
        out: list[tuple[str, bytes]] = []
        while i < len(keys) and len(out) < limit and keys[i].startswith(prefix):
            out.append((keys[i], docs[keys[i]]))
            i += 1
        return out

    async def state(self, model: str) -> ModelState:
        gen = self._ensure(model)
        return ModelState(gen, self._positions[(model, gen)])

    async def position(self, model: str, generation: int) -> int | None:
        return self._positions.get((model, generation))

    async def commit(
        self,
        model: str,
        generation: int,
        expected_position: int,
        new_position: int,
        docs: Mapping[str, bytes | None],
    ) -> bool:
        if self._positions.get((model, generation)) != expected_position:
            return False
        store, keys = self._docs[(model, generation)], self._keys[(model, generation)]
        for key, body in docs.items():
            if body is None:
                if store.pop(key, None) is not None:
                    keys.pop(bisect.bisect_left(keys, key))
            else:
                if key not in store:
                    bisect.insort(keys, key)
                store[key] = body
        self._positions[(model, generation)] = new_position
        return True

    async def start_generation(self, model: str) -> int:
        self._ensure(model)
        gen = max(g for (m, g) in self._positions if m == model) + 1
        self._positions[(model, gen)] = 0
        self._docs[(model, gen)] = {}
        self._keys[(model, gen)] = []
        return gen

    async def activate(self, model: str, generation: int) -> None:
        self._live[model] = generation
        for key in [k for k in self._positions if k[0] == model and k[1] != generation]:
            del self._positions[key]
            self._docs.pop(key, None)
            self._keys.pop(key, None)
