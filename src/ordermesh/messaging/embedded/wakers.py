"""In-process wake-ups: a publish wakes the consumers of the same file in this process at once,
instead of leaving them to their next poll (other processes still find the rows by polling)."""

from __future__ import annotations

import asyncio
import os

# Processes share the file; within this process, publishes wake consumers of the same file.
WAKERS: dict[str, set[asyncio.Event]] = {}


def file_key(path: str) -> str:
    """One key per file, however its path is spelled."""
    return os.path.realpath(path)


def wake(path: str) -> None:
    for event in list(WAKERS.get(path, ())):
        event.set()
