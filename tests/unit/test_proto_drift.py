"""The committed gRPC code is exactly what grpcio-tools generates from proto/ today."""

from __future__ import annotations

from pathlib import Path

from ordermesh.rpc.codegen import generate

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    fresh = generate(ROOT / "proto", tmp_path)
    assert fresh, "nothing generated"
    for path in fresh:
        relative = path.relative_to(tmp_path)
        committed = ROOT / "src" / relative
        assert committed.exists(), f"{relative} is not committed: run `make proto`"
        assert committed.read_text() == path.read_text(), f"{relative} drifted from proto/: run `make proto`"


def test_grpc_packages_share_one_pinned_version() -> None:
    import re

    pins = dict(re.findall(r'"(grpcio[a-z-]*)==([0-9.]+)"', (ROOT / "pyproject.toml").read_text()))
    expected = {"grpcio", "grpcio-tools", "grpcio-health-checking", "grpcio-reflection", "grpcio-status"}
    assert expected <= set(pins)
    assert len(set(pins.values())) == 1, f"grpcio-* pins differ: {pins}"
