"""``ordermesh up`` for a test: the ``system`` fixture, the order API's URL and the environment
(every port in it), killed afterwards (a test that needs a clean stop starts its own)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import start_up, stop


@pytest.fixture
def system(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    proc, url, env = start_up(tmp_path)
    try:
        yield url, env
    finally:
        stop(proc, signal.SIGKILL)  # its children go with it: test_system proves that
