"""The document store behind read models.

A read model is a named set of JSON documents in *generations*: the live generation serves reads
while a rebuild fills the next one beside it; activation swaps them atomically. Each generation
has its own checkpoint, and documents are written in the same transaction that moves it, with a
compare-and-set on the old value: two projectors can never both apply the same events.
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
