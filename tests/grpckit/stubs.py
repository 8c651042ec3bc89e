"""echo.proto compiled at test time with grpc_tools.protoc (no generated code in the tree)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

PROTO = Path(__file__).with_name("echo.proto")

_compiled: SimpleNamespace | None = None


def compile_echo(directory: Path) -> SimpleNamespace:
    """``pb2`` (the messages) and ``pb2_grpc`` (stub and servicer glue) of test.v1.Echo.

    A process compiles once: protobuf's descriptor pool holds one echo.proto, so later calls
    return the first call's modules whatever ``directory`` they name."""
    global _compiled
    if _compiled is not None:
        return _compiled
    from grpc_tools import protoc

    # grpc_tools ships the well-known types' .proto files beside its own module
    well_known = Path(protoc.__file__).parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{PROTO.parent}", f"-I{well_known}",
            f"--python_out={directory}", f"--grpc_python_out={directory}", PROTO.name]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc could not compile {PROTO}")
    # echo_pb2_grpc imports echo_pb2 by its bare name: the folder is importable meanwhile
    sys.path.insert(0, str(directory))
    try:
        _compiled = SimpleNamespace(pb2=importlib.import_module("echo_pb2"),
                                    pb2_grpc=importlib.import_module("echo_pb2_grpc"))
    finally:
        sys.path.remove(str(directory))
    return _compiled
