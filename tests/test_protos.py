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

    from medsynth.bus.messages import JobKind, decode_command, make_command
    from medsynth.v1 import jobs_pb2

    data = make_command("job-1", JobKind.prepare_dataset, jobs_pb2.PrepareDataset(dataset="d", size=64)).SerializeToString()
    extra = descriptor_pb2.FileDescriptorProto(name="x").SerializeToString()
    # field 99, length-delimited: tag = (99 << 3) | 2, encoded as a varint
    tag = bytes([(99 << 3 | 2) & 0x7F | 0x80, (99 << 3 | 2) >> 7])
    command, kind, spec = decode_command(data + tag + bytes([len(extra)]) + extra)
    assert (command.job_id, kind, spec.dataset, spec.size) == ("job-1", JobKind.prepare_dataset, "d", 64)


def test_every_family_and_training_option_has_a_typed_proto_field() -> None:
    """A GeneratorSpec survives the TrainGenerator command exactly, for every registered family, with
    every training option set (so an option added to a model without its proto field fails here)."""
    from medsynth.generators.base import DataSpec, TrainingOptions
    from medsynth.generators.proto import from_proto, to_proto
    from medsynth.generators.registry import FAMILIES, GeneratorSpec, parse_options
    from medsynth.v1 import jobs_pb2

    training = TrainingOptions(steps=7, batch_size=4, lr_g=1e-3, lr_d=2e-3, betas=(0.1, 0.9), ema_decay=0.5,
                               checkpoint_every=3, log_every=2, seed=2**62, precision="bf16", time_budget_s=12.5)
    assert set(TrainingOptions.model_fields) == set(jobs_pb2.TrainingOptions.DESCRIPTOR.fields_by_name)
    for name, family in FAMILIES.items():
        fields = set(family.options_type.model_fields) - {"family"}
        message = jobs_pb2.TrainGenerator.DESCRIPTOR.fields_by_name[name.replace("-", "_")].message_type
        assert fields == set(message.fields_by_name), name
        spec = GeneratorSpec(parse_options({"family": name}), training, DataSpec(64, 3))
        wire = jobs_pb2.TrainGenerator.FromString(to_proto(spec, dataset="d", view_id="v").SerializeToString())
        assert from_proto(wire) == spec, name


def test_every_segmentation_option_survives_the_command_typed() -> None:
    """A segmentation request reaches the worker field by field (no JSON string inside the message): every
    option of SegmentationCreate has a typed TrainSegmenter field and comes back equal after the wire."""
    from medsynth.commands.requests import SegmentationCreate
    from medsynth.commands.build import segmenter_message
    from medsynth.handlers.segment import segmentation_options
    from medsynth.v1 import jobs_pb2

    assert set(SegmentationCreate.model_fields) == set(jobs_pb2.TrainSegmenter.DESCRIPTOR.fields_by_name)
    body = SegmentationCreate(dataset="d", view_id="v", source="mixed", cohort_id="c", synthetic_ratio=0.3, synthetic_patients=7,
                              augment=True, model="swin-unetr", steps=123, batch_size=5, seed=2**40, early_stopping=True,
                              val_every=7, patience=3, min_steps=50, min_delta=0.01)
    wire = jobs_pb2.TrainSegmenter.FromString(segmenter_message(body).SerializeToString())
    options = segmentation_options(wire)
    assert options == body.model_dump(mode="json", exclude={"dataset", "view_id", "cohort_id"})
    ratio_only = jobs_pb2.TrainSegmenter.FromString(segmenter_message(SegmentationCreate(dataset="d", view_id="v")).SerializeToString())
    assert "synthetic_patients" not in segmentation_options(ratio_only) and segmentation_options(ratio_only)["source"] == "real"
    assert segmentation_options(ratio_only) == SegmentationCreate(dataset="d", view_id="v").model_dump(
        mode="json", exclude={"dataset", "view_id", "cohort_id", "synthetic_patients"})  # unset val_every and patience stay unset


def test_a_prepare_dataset_request_reaches_the_worker_field_by_field() -> None:
    from medsynth.commands.requests import PrepareDatasetCreate
    from medsynth.v1 import jobs_pb2

    body_fields = set(PrepareDatasetCreate.model_fields) - {"version", "mode"}
    assert body_fields <= set(jobs_pb2.PrepareDataset.DESCRIPTOR.fields_by_name)
    assert "keep_empty_eval" in body_fields and PrepareDatasetCreate().keep_empty_eval is True


def test_a_segmentation_command_without_its_typed_fields_fails_permanently_with_a_reason() -> None:
    """A command published before the fields were typed (its settings in the retired config_json field,
    number 5) decodes without them: the worker refuses it and says what to do instead of training on defaults."""
    import pytest

    from medsynth.core.errors import PermanentJobError
    from medsynth.handlers.segment import segmentation_options
    from medsynth.v1 import jobs_pb2

    settings = b'{"source": "real", "steps": 10, "batch_size": 4}'
    old = jobs_pb2.TrainSegmenter(dataset="d", view_id="v").SerializeToString() + bytes([5 << 3 | 2, len(settings)]) + settings
    with pytest.raises(PermanentJobError, match="submit the segmentation again"):
        segmentation_options(jobs_pb2.TrainSegmenter.FromString(old))
