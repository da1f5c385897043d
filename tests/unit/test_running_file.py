"""``DATA_DIR/up.json``: while an ``up`` runs, the CLI commands that call it use the addresses
it really serves (``up --port`` may differ from the settings); a file left by a dead ``up``, or
one that is not ours to read, changes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from ordermesh.config import Settings
from ordermesh.kit.running import FILE, as_running, recorded


def test_the_running_ups_addresses_win_while_it_lives_and_the_file_goes_with_it(tmp_path: Path) -> None:
    served = Settings(data_dir=tmp_path, http_port=9100, grpc_port=9101, payments_http_port=9102)
    asked = Settings(data_dir=tmp_path)  # the CLI's environment: the default ports
    with recorded(served) as path:
        seen = as_running(asked)
        assert (seen.http_port, seen.grpc_port, seen.payments_http_port) == (9100, 9101, 9102)
        assert seen.jwt_secret == asked.jwt_secret  # only addresses are taken from the file
    assert not path.exists()
    assert as_running(asked).http_port == asked.http_port


def test_a_file_from_a_dead_up_or_a_broken_one_is_ignored(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    asked = Settings(data_dir=tmp_path)
    doc = {"pid": int(dead.stdout), "addresses": {"http_port": 9100}}
    (tmp_path / FILE).write_bytes(orjson.dumps(doc))
    assert as_running(asked).http_port == asked.http_port
    for broken in (b"{", b"[]", b'{"pid": "x", "addresses": {}}', b'{"pid": 1}'):
        (tmp_path / FILE).write_bytes(broken)
        assert as_running(asked).http_port == asked.http_port
