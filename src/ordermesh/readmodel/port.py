"""The document store behind read models.

A read model is a named set of JSON documents in *generations*: the live generation serves reads
while a rebuild fills the next one beside it; activation swaps them atomically. Each generation
has its own checkpoint, and documents are written in the same transaction that moves it, with a
compare-and-set on the old value: two projectors can never both apply the same events.

Keys are ordered by their code points (UTF-8 byte order, SQL collation "C"), so a model can keep
an index as one document per entry under a common prefix, and read a page of it with ``scan``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ModelState:
    generation: int
    position: int


class DocStore(Protocol):
    async def get(self, model: str, key: str) -> bytes | None:
        """A document of the model's live generation, as stored JSON bytes."""
        ...

    async def get_in(self, model: str, generation: int, key: str) -> bytes | None: ...

    async def scan(
        self, model: str, prefix: str, after: str | None = None, limit: int = 100
    ) -> list[tuple[str, bytes]]:
        """Up to ``limit`` documents of the live generation whose keys start with ``prefix`` and
        sort after ``after`` (all of them when None), as (key, body) in key order: one indexed
        range read, whatever the size of the model."""
        ...

    async def state(self, model: str) -> ModelState:
        """The live generation and its checkpoint (generation 1 at position 0 for a new model)."""
        ...

    async def position(self, model: str, generation: int) -> int | None:
        """The checkpoint of one generation, or None if it does not exist (any more)."""
        ...

    async def commit(
        self,
        model: str,
        generation: int,
        expected_position: int,
        new_position: int,
        docs: Mapping[str, bytes | None],
    ) -> bool:
        """Write ``docs`` (None deletes) and move the checkpoint, if it is still
        ``expected_position``. Returns False, writing nothing, when it is not."""
        ...

    async def start_generation(self, model: str) -> int:
        """Create an empty generation beside the live one and return its number."""
        ...

    async def activate(self, model: str, generation: int) -> None:
        """Make ``generation`` live and drop every other generation of the model."""
        ...


def prefix_end(prefix: str) -> str | None:
    """The least key above every key starting with ``prefix`` (None: no bound), so a prefix read
    is an index range ``prefix <= key < prefix_end(prefix)``."""
    while prefix:
        code = ord(prefix[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:  # surrogates are no characters of a UTF-8 key
            code = 0xE000
        if code <= 0x10FFFF:
            return prefix[:-1] + chr(code)
        prefix = prefix[:-1]
    return None
