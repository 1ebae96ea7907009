"""`python -m grpc_helper.protoc`: a user's proto importing grpc-helper's, compiled with the installed package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from grpc_helper.protoc import MISSING_TOOLS, PROTOS

GREETER = """
syntax = "proto3";
package greeter;
import "grpc_helper/api/common.proto";
import "google/protobuf/empty.proto";

message Greeting { string text = 1; }
message GreetResult { Result r = 1; string text = 2; }  // common.proto has no package

service GreeterService {
    rpc greet(Greeting) returns (GreetResult);
    rpc ping(google.protobuf.Empty) returns (google.protobuf.Empty);
}
"""

# Run from the output folder: the generated module, its stub, and grpc-helper's message it uses
CHECK = """
import greeter_pb2, greeter_pb2_grpc
from grpc_helper.api import Result, ResultCode
r = greeter_pb2.GreetResult(r=Result(code=ResultCode.OK), text="hi")
assert greeter_pb2.GreetResult.FromString(r.SerializeToString()).text == "hi"
assert greeter_pb2_grpc.GreeterServiceStub
"""


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_packaged_protos_are_the_sources() -> None:
    """The shipped copies (package data) are protos/grpc_helper's (scripts/gen-protos.py --check, too)."""
    sources = Path(__file__).resolve().parent.parent / "protos"
    shipped = sorted(p.relative_to(PROTOS) for p in PROTOS.rglob("*.proto"))
    assert shipped == sorted(p.relative_to(sources) for p in (sources / "grpc_helper").rglob("*.proto"))
    assert all((PROTOS / p).read_bytes() == (sources / p).read_bytes() for p in shipped)


def test_generate_a_service_importing_grpc_helper(tmp_path: Path) -> None:
    (tmp_path / "protos").mkdir()
    (tmp_path / "protos" / "greeter.proto").write_text(GREETER)
    (tmp_path / "out").mkdir()
    out = "--python_out=out", "--grpc_python_out=out"
    done = run("-m", "grpc_helper.protoc", "-I", "protos", *out, "protos/greeter.proto", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    done = run("-c", CHECK, cwd=tmp_path / "out")
    assert done.returncode == 0, done.stderr


def test_without_grpcio_tools(tmp_path: Path) -> None:
    """grpcio-tools missing: one line naming the extra that brings it, exit code 2."""
    no_tools = "import sys; sys.modules['grpc_tools'] = None; from grpc_helper.protoc import main; sys.exit(main([]))"
    done = run("-c", no_tools, cwd=tmp_path)
    assert (done.returncode, done.stderr) == (2, MISSING_TOOLS + "\n")
