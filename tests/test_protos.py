"""The generated protobuf code in the library must match protos/*.proto (run `make protos` if not)."""

from __future__ import annotations

import filecmp
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parents[1]
GENERATED = REPO / "libs" / "medsynth" / "src" / "medsynth" / "v1"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    protos = sorted((REPO / "protos").rglob("*.proto"))
    assert protos, "no .proto files found"
    args = ["protoc", f"-I{REPO / 'protos'}", f"-I{Path(protoc.__file__).parent / '_proto'}",
            f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", *map(str, protos)]
    assert protoc.main(args) == 0
    fresh = sorted(p.name for p in (tmp_path / "medsynth" / "v1").iterdir())
    committed = sorted(p.name for p in GENERATED.iterdir() if p.suffix in (".py", ".pyi") and p.name != "__init__.py")
    assert fresh == committed
    stale = [name for name in fresh if not filecmp.cmp(tmp_path / "medsynth" / "v1" / name, GENERATED / name, shallow=False)]
    assert not stale, f"generated code is stale, run `make protos`: {stale}"


def test_unknown_fields_are_tolerated() -> None:
    """A newer producer may add fields; an older consumer must still read the rest."""
    from google.protobuf import descriptor_pb2

    from medsynth.messages import JobKind, decode_command, make_command
    from medsynth.v1 import jobs_pb2

    data = make_command("job-1", JobKind.prepare_dataset, jobs_pb2.PrepareDataset(dataset="d", size=64)).SerializeToString()
    extra = descriptor_pb2.FileDescriptorProto(name="x").SerializeToString()
    # field 99, length-delimited: tag = (99 << 3) | 2, encoded as a varint
    tag = bytes([(99 << 3 | 2) & 0x7F | 0x80, (99 << 3 | 2) >> 7])
    command, kind, spec = decode_command(data + tag + bytes([len(extra)]) + extra)
    assert (command.job_id, kind, spec.dataset, spec.size) == ("job-1", JobKind.prepare_dataset, "d", 64)
