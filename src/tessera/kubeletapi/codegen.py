"""Regenerate the Python stubs of the kubelet protos kept next to them.

The generated `api_pb2.py`, `api_pb2.pyi` and `api_pb2_grpc.py` files are committed, so
installing Tessera needs no code generator; the test suite runs `generate` into a scratch
directory and fails if the committed files differ (so a changed `.proto` cannot go stale).
Run `python -m tessera.kubeletapi.codegen` after editing a `.proto` (needs grpcio-tools,
which the `test` extra installs).
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent.parent  # the directory holding the `tessera` package
PROTOS = tuple(sorted(PACKAGE_DIR.rglob("*.proto")))


def generate(out_dir: Path = SOURCE_ROOT) -> list[Path]:
    """Compile every proto of this package into `out_dir` (mirroring `tessera/kubeletapi/...`,
    so the generated imports are absolute `tessera.kubeletapi...` imports)."""
    from grpc_tools import protoc  # a build-time tool only; not a runtime dependency

    include = str(Path(protoc.__file__).resolve().parent / "_proto")
    written: list[Path] = []
    for proto in PROTOS:
        relative = proto.relative_to(SOURCE_ROOT)
        status = protoc.main([
            "grpc_tools.protoc",
            f"-I{SOURCE_ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(relative),
        ])
        if status != 0:
            raise RuntimeError(f"protoc failed on {relative} (exit status {status})")
        stem = out_dir / relative.with_suffix("")
        written += [stem.with_name(stem.name + suffix)
                    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]
    return written


if __name__ == "__main__":
    for path in generate():
        print(path, file=sys.stderr)
