"""Generated contract documents (OpenAPI, AsyncAPI) against their committed copies."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest


def assert_committed_document(committed: Path, current: str, how: str) -> None:
    """A generated contract document (OpenAPI, AsyncAPI) must be committed exactly as the code
    generates it today, and serialised deterministically."""
    if not committed.exists():
        pytest.fail(f"{committed} is missing: {how}", pytrace=False)
    text = committed.read_text(encoding="utf-8")
    if text != current:
        name = f"{committed.parent.name}/{committed.name}"
        diff = difflib.unified_diff(text.splitlines(), current.splitlines(), name, "generated", lineterm="")
        shown = "\n".join(list(diff)[:60])
        pytest.fail(f"{name} differs from what the code generates: {how}.\n{shown}", pytrace=False)
    assert current.endswith("}\n") and current.isascii()
    assert current == json.dumps(json.loads(current), indent=2, sort_keys=True) + "\n"


__all__ = ["assert_committed_document"]
