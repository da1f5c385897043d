"""Where a running ``ordermesh up`` listens, for the CLI commands that call it.

``up --port 9000`` (or ``--host``, ``--grpc-port``) moves a service away from the port its settings
name, so ``ordermesh faults``, ``breakers``, ``demo`` and ``info``, started later with the same
environment, would call the wrong port. ``up`` records the addresses it really serves in
``DATA_DIR/up.json`` while it runs, and those commands take them from there — only while the
``up`` that wrote the file is alive (a file left by a killed one is ignored).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from ordermesh.config import Settings

FILE = "up.json"


ADDRESSES = ("http_host", *(name for name in Settings.model_fields if name.endswith("_port")))


def _addresses(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in ADDRESSES}


@contextlib.contextmanager
def recorded(settings: Settings) -> Iterator[Path]:
    """``DATA_DIR/up.json`` with this process's addresses, until the block ends."""
    path = settings.data_dir / FILE
    path.write_bytes(orjson.dumps({"pid": os.getpid(), "addresses": _addresses(settings)}))
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            if orjson.loads(path.read_bytes()).get("pid") == os.getpid():  # not a newer up's
                path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal sent: only whether the pid exists (PermissionError: it does)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def as_running(settings: Settings) -> Settings:
    """``settings`` with the addresses of the ``up`` running on its data dir, if one is."""
    try:
        doc = orjson.loads((settings.data_dir / FILE).read_bytes())
        pid, addresses = int(doc["pid"]), dict(doc["addresses"])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return settings
    if not _alive(pid):
        return settings
    known = {k: v for k, v in addresses.items() if k in ADDRESSES}
    return settings.model_copy(update=known)


__all__ = ["ADDRESSES", "FILE", "as_running", "recorded"]
