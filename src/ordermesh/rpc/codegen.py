"""Regenerates the committed gRPC/protobuf code from ``proto/`` (``make proto``; a test diffs it).

Python code with grpcio-tools' own protoc; typed stubs (``.pyi``) with mypy-protobuf, so
``mypy --strict`` checks the code that uses the messages.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def protos(proto_root: Path) -> list[str]:
    """Every ``.proto`` under ``proto_root``, relative to it (each service adds its own)."""
    return sorted(p.relative_to(proto_root).as_posix() for p in proto_root.rglob("*.proto"))


def generate(proto_root: Path, out: Path) -> list[Path]:
    """Write the generated modules for every proto under ``out``; return their paths."""
    from grpc_tools import protoc  # a dev dependency: generation is a development task

    found = protos(proto_root)

    include = Path(protoc.__file__).parent / "_proto"
    plugin_dir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={shutil.which('protoc-gen-mypy', path=str(plugin_dir))}",
        f"--plugin=protoc-gen-mypy_grpc={shutil.which('protoc-gen-mypy_grpc', path=str(plugin_dir))}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *(str(proto_root / p) for p in found),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    generated = []
    for proto in found:
        stem = out / proto.removesuffix(".proto")
        generated += [
            Path(f"{stem}{suffix}") for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
        ]
    return generated


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[3]
    for path in generate(root / "proto", root / "src"):
        print(path.relative_to(root))
