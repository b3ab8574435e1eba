"""Registry entries and view summaries are typed; every format earlier versions stored still loads
(tests/stored/, one file per writer), and one that does not validate fails its job naming the field."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from medsynth.bus.messages import JobKind
from medsynth.commands.build import cohort_command
from medsynth.commands.requests import CohortCreate
from medsynth.core.errors import InvalidInput
from medsynth.core.settings import Settings
from medsynth.datasets.views import ViewSummary, load_view, view_key
from medsynth.generators.base import MaskSource
from medsynth.generators.entry import LEGACY_FAMILY, GeneratorEntry, load_entry
from medsynth.jobs.records import JobRecord, JobRecords, JobState, new_job_id
from medsynth.sampling.modes import sample_mode
from medsynth.store import ObjectStore
from medsynth.store.local import LocalStore
from medsynth.v1 import jobs_pb2

STORED = Path(__file__).parent / "stored"
ENTRIES = sorted(STORED.glob("generator-entry-format*.json"))


def _stored(name: str) -> dict[str, Any]:
    return json.loads((STORED / name).read_text())


def _registered(store: ObjectStore, entry: dict[str, Any]) -> str:
    """A succeeded train-generator job whose result is ``entry``, as the store holds it."""
    job_id = new_job_id(JobKind.train_generator)
    key = f"generators/{job_id}/generator.json"
    store.put_json(key, entry)
    JobRecords(store).put(JobRecord(job_id=job_id, kind=JobKind.train_generator, spec={}, state=JobState.succeeded,
                                    result_keys={"generator": key}))
    return job_id


def test_every_writer_of_entries_has_a_stored_file() -> None:
    assert [p.name for p in ENTRIES] == [f"generator-entry-format{n}.json" for n in (1, 2, 3, 4)]


@pytest.mark.parametrize("path", ENTRIES, ids=lambda p: p.stem)
def test_stored_entries_load_and_say_what_their_generator_can_do(path: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    raw = json.loads(path.read_text())
    store.put_json("generators/g/generator.json", raw)
    entry = load_entry(store, "generators/g/generator.json")
    spec = entry.generator_spec()
    assert entry.family == raw["family"] == spec.options.family
    assert entry.generator_id == raw["generator_id"] and entry.checkpoint_key == raw["checkpoint_key"]
    assert entry.registered_at.isoformat() == raw["registered_at"]
    assert [s.value for s in entry.mask_sources] == raw.get("mask_sources", ["generated"])
    # the cohort check reads the entry: what the generator was trained for is accepted, what it was not is refused
    condition = 1 if raw.get("condition_on") else None
    assert sample_mode(entry, "generated", condition).mask_source is MaskSource.generated
    if condition is None and not spec.family.conditional(spec.options):
        with pytest.raises(InvalidInput, match="condition"):
            sample_mode(entry, "generated", 1)
    # what today's writer would store of it reads back the same
    assert GeneratorEntry.model_validate(json.loads(json.dumps(entry.stored()))) == entry


def test_a_format_1_entry_gets_what_was_true_when_it_was_written() -> None:
    raw = _stored("generator-entry-format1.json")
    entry = GeneratorEntry.model_validate({k: v for k, v in raw.items() if k != "family"})
    assert entry.family == LEGACY_FAMILY == "joint-gan"
    assert entry.spec is None and entry.options() == raw["config"] and "config" in entry.stored()
    assert entry.mask_sources == [MaskSource.generated] and entry.condition_on is None
    assert entry.steps_done == 3 and entry.stopped_by_time_budget is False and entry.stages == {}
    spec = entry.generator_spec()  # the first joint GAN's config, converted as its checkpoint is
    assert (spec.options.loss.value, spec.data.image_size, spec.training.steps) == ("lsgan", 32, 3)


def test_format_4_entries_read_their_stages_and_new_entries_store_no_config() -> None:
    entry = GeneratorEntry.model_validate(_stored("generator-entry-format4.json"))
    assert entry.stages["autoencoder"] == {"steps": 500, "reconstruction_mse": 0.0031}
    assert "config" not in entry.stored() and entry.stored()["spec"] == entry.spec


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"checkpoint_key": None}, "checkpoint_key"),
        ({"dataset_version": "three"}, "dataset_version"),
        ({"mask_sources": ["painted"]}, "mask_sources.0"),
        ({"registered_at": "yesterday"}, "registered_at"),
        ({"spec": None}, "an entry needs a spec"),
    ],
)
def test_an_entry_that_does_not_validate_is_refused_naming_the_field(tmp_path: Path, change: dict, named: str) -> None:
    store = LocalStore(tmp_path)
    raw = {k: v for k, v in {**_stored("generator-entry-format3.json"), **change}.items() if v is not None}
    store.put_json("generators/g/generator.json", raw)
    with pytest.raises(InvalidInput, match=r"generator entry generators/g/generator\.json is not valid: .*") as caught:
        load_entry(store, "generators/g/generator.json")
    assert named in str(caught.value)


@dataclass
class Ctx:
    """What the sample-cohort handler uses of its job context before it samples."""

    store: ObjectStore
    job_id: str = field(default_factory=lambda: new_job_id(JobKind.sample_cohort))
    settings: Settings = field(default_factory=Settings)

    @property
    def records(self) -> JobRecords:
        return JobRecords(self.store)

    def progress(self, fraction: float, message: str = "") -> None:
        pass


def test_a_cohort_of_a_generator_whose_entry_is_broken_fails_naming_the_field(tmp_path: Path) -> None:
    """At submission (422) and, for one already queued, in its job (InvalidInput: the worker fails it
    without retrying); nothing of the cohort is written."""
    from medsynth.handlers.sample import sample_cohort

    store = LocalStore(tmp_path)
    raw = _stored("generator-entry-format3.json")
    del raw["model_name"]
    generator_id = _registered(store, raw)
    with pytest.raises(InvalidInput, match="model_name: Field required"):
        cohort_command(CohortCreate(generator_id=generator_id, count=4, condition=1), store, JobRecords(store))
    ctx = Ctx(store)
    with pytest.raises(InvalidInput, match="model_name: Field required"):
        sample_cohort(jobs_pb2.SampleCohort(generator_id=generator_id, count=4), ctx)
    assert list(store.list(f"cohorts/{ctx.job_id}/")) == []


def test_views_of_both_formats_load_and_say_which_splits_keep_empty_slices(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for name, keeps_test in (("view-format1.json", False), ("view-format2.json", True)):
        raw = _stored(name)
        store.put_json(view_key(raw["dataset"], raw["view_id"]), raw)
        view = load_view(store, raw["dataset"], raw["view_id"])
        assert view.model_dump(mode="json") == raw, name  # read back and dumped as written
        assert (view.spec.keeps_empty("test"), view.spec.keeps_empty("val"), view.spec.keeps_empty("train")) == (keeps_test, keeps_test, False)


def test_the_stored_view_loads_typed_and_one_missing_a_split_names_it(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    raw = _stored("view-format1.json")
    store.put_json(view_key(raw["dataset"], raw["view_id"]), raw)
    view = load_view(store, raw["dataset"], raw["view_id"])
    assert isinstance(view, ViewSummary) and view.model_dump(mode="json") == raw
    assert (view.counts["train"], view.spec.mode, len(view.patients["test"])) == (61, "slices2d", 1)
    with pytest.raises(KeyError, match="no split 'holdout'"):
        view.counts["holdout"]
    broken = {**raw, "counts": {"train": 61, "val": 22}}
    store.put_json(view_key(raw["dataset"], "broken"), broken)
    with pytest.raises(InvalidInput, match=r"view .*/views/broken/view\.json is not valid: counts\.test: Field required"):
        load_view(store, raw["dataset"], "broken")
