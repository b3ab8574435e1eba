"""A :class:`~medsynth.generators.registry.GeneratorSpec` in and out of the typed
``medsynth.v1.TrainGenerator`` command.

A family's options travel in the ``TrainGenerator.family`` oneof, in the message whose field is named
after the family (``joint-gan`` → ``joint_gan``) and whose fields carry the options' names (enums as
their string values), so the conversion is generic: no family is named here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from medsynth.core.errors import InvalidInput
from medsynth.generators.base import DataSpec
from medsynth.generators.registry import FAMILIES, GeneratorSpec, parse_options, parse_training
from medsynth.v1 import jobs_pb2


def family_field(family: str) -> str:
    """The ``TrainGenerator.family`` oneof field of a family name."""
    return family.replace("-", "_")


def to_proto(spec: GeneratorSpec, *, dataset: str, view_id: str, condition_on: str = "") -> jobs_pb2.TrainGenerator:
    """The train-generator command of ``spec`` (options resolved, so the worker needs no defaults)."""
    message = jobs_pb2.TrainGenerator(dataset=dataset, view_id=view_id, condition_on=condition_on)
    field = family_field(spec.options.family)
    if field not in _oneof_fields():
        raise InvalidInput(f"generator family {spec.options.family!r} has no message in TrainGenerator.family.")
    _fill(getattr(message, field), spec.options.model_dump(mode="json", exclude={"family"}))
    _fill(message.training, spec.training.resolved())
    _fill(message.data, spec.data.to_dict())
    return message


def from_proto(message: jobs_pb2.TrainGenerator) -> GeneratorSpec:
    """The validated spec a train-generator command carries; :class:`InvalidInput` naming what is wrong."""
    field = message.WhichOneof("family")
    family = next((name for name in FAMILIES if family_field(name) == field), None)
    if family is None:
        raise InvalidInput(f"train-generator command names no known generator family (oneof field {field!r}).")
    training = _plain(message.training)
    if not training.get("betas"):
        training.pop("betas", None)
    return GeneratorSpec(
        options=parse_options({"family": family, **_plain(getattr(message, field))}),
        training=parse_training(training),
        data=DataSpec.from_dict({k: int(v) for k, v in _plain(message.data).items()}),
    )


def _oneof_fields() -> set[str]:
    return {f.name for f in jobs_pb2.TrainGenerator.DESCRIPTOR.oneofs_by_name["family"].fields}


def _fill(message: Message, values: Mapping[str, Any]) -> None:
    try:
        json_format.ParseDict({k: v for k, v in values.items() if v is not None}, message)
    except json_format.ParseError as exc:
        raise InvalidInput(f"cannot put these options into {type(message).__name__}: {exc}") from exc


def _plain(message: Message) -> dict[str, Any]:
    """Every field, set or not (a false flag must not fall back to a default of true), as plain data."""
    out = json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    for field in message.DESCRIPTOR.fields:  # 64-bit integers come back as strings in the JSON mapping
        if field.name in out and field.cpp_type in (field.CPPTYPE_INT64, field.CPPTYPE_UINT64):
            out[field.name] = int(out[field.name])
    return out
