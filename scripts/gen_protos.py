"""Generate Python stubs for infermesh's own contracts from protos/ (``make gen``).

Writes ``*_pb2.py``, ``*_pb2.pyi``, ``*_pb2_grpc.py`` and ``*_pb2_grpc.pyi`` under
``libs/protos/src`` and copies the Thrift IDL beside them. ``--check`` regenerates into a
temporary directory and exits 1 naming every file that differs from what is committed.
The inference data plane (package ``inference``) is deliberately absent: it is served and
called with the stubs that tritonclient ships.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "libs" / "protos" / "src"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi", ".thrift")


def generate(out: Path) -> None:
    """Run protoc over every .proto under protos/ and copy the .thrift files into ``out``."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    if not protos:
        sys.exit("gen_protos: no .proto files under protos/")
    plugin = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy_grpc={plugin}",
        f"--mypy_grpc_out=quiet:{out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit("gen_protos: protoc failed (see above)")
    for idl in PROTO_ROOT.rglob("*.thrift"):
        target = out / idl.relative_to(PROTO_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(idl, target)


def generated_files(root: Path) -> set[Path]:
    """Every generated file under ``root``, relative to it."""
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)}


def check() -> int:
    """Regenerate into a temporary directory and report every stale, missing or extra file."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        expected, actual = generated_files(fresh), generated_files(OUT_ROOT)
        stale = sorted(str(p) for p in expected & actual if not filecmp.cmp(fresh / p, OUT_ROOT / p, shallow=False))
        problems = (
            [f"missing: {p}" for p in sorted(map(str, expected - actual))]
            + [f"not generated from protos/: {p}" for p in sorted(map(str, actual - expected))]
            + [f"stale: {p}" for p in stale]
        )
    for line in problems:
        print(f"gen_protos --check: {line}", file=sys.stderr)
    if problems:
        print("generated stubs are out of date: run `make gen` and commit the result", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the committed stubs are stale")
    if parser.parse_args().check:
        return check()
    for old in generated_files(OUT_ROOT):
        (OUT_ROOT / old).unlink()
    generate(OUT_ROOT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
