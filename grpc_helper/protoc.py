"""`python -m grpc_helper.protoc`: generate a service's code against grpc-helper's protos, from an installed package.

    python -m grpc_helper.protoc -I protos --python_out=OUT --grpc_python_out=OUT my.proto

It is grpcio-tools' `python -m grpc_tools.protoc` (same options), with two include paths appended:
grpc-helper's own `.proto` files (package data, imported as `grpc_helper/api/common.proto`, ...)
and the well-known types grpcio-tools ships (`google/protobuf/*.proto`). grpcio-tools is not a
dependency of the library (servers don't need a compiler): `pip install 'grpc-helper[protoc]'`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

# Copied there from protos/grpc_helper by scripts/gen-protos.py (its --check keeps them in sync)
PROTOS = Path(__file__).resolve().parent / "protos"
MISSING_TOOLS = "error: grpc_helper.protoc needs grpcio-tools: pip install 'grpc-helper[protoc]'"


def main(argv: Sequence[str] | None = None) -> int:
    """Run protoc with `argv` (default: the command line) and the include paths; its exit code (2: no grpcio-tools)."""
    try:
        # grpcio-tools ships no type information
        from grpc_tools import protoc  # type: ignore[import-untyped]
    except ImportError:
        print(MISSING_TOOLS, file=sys.stderr)
        return 2
    well_known = Path(protoc.__file__).parent / "_proto"
    args = sys.argv[1:] if argv is None else list(argv)
    # The user's -I come first: protoc searches include paths in order
    return int(protoc.main(["grpc_helper.protoc", *args, f"-I{PROTOS}", f"-I{well_known}"]))


if __name__ == "__main__":
    sys.exit(main())
