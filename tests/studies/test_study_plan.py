"""A study's grid expanded into jobs: what is made, what each job needs, content keys, bad grids."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from medsynth.studies.plan import check_size, expand, node_keys
from medsynth.studies.spec import StudyCreate
from medsynth.core.errors import InvalidInput

TWO_FAMILIES = {
    "dataset": "demo", "view_id": "v1", "seeds": [0, 1], "cohort_size": 16,
    "families": [{"generator": {"family": "joint-gan"}, "training": {"steps": 6, "batch_size": 8}},
                 {"generator": {"family": "spade"}, "training": {"steps": 6, "batch_size": 8}, "mask_source": "real-deformed"}],
    "arms": {"synthetic": True, "ratios": [0.5], "augmentation": [False]},
    "segmentation": {"models": ["unet"], "steps": 4, "batch_size": 8},
}


def test_the_grid_becomes_generators_cohorts_segmentations_and_evaluations() -> None:
    nodes = expand(StudyCreate.model_validate(TWO_FAMILIES))
    kinds = [n.kind.value for n in nodes.values()]
    # per seed one real-only run; per family and seed a generator, a cohort, 2 runs (synthetic, mixed 0.5), an evaluation
    assert {k: kinds.count(k) for k in set(kinds)} == {"train-segmenter": 2 + 2 * 2 * 2, "train-generator": 4,
                                                        "sample-cohort": 4, "evaluate": 4}
    order = list(nodes)
    for node in nodes.values():
        assert all(order.index(d) < order.index(node.id) for d in node.needs()), node.id  # inputs come first
    cohort = nodes["cohort/spade/s1"]
    assert cohort.deps == {"generator_id": "generator/spade/s1"} and cohort.body["mask_source"] == "real-deformed"
    assert nodes["generator/spade/s1"].body["training"]["seed"] == 1  # each seed trains its own generator
    mixed = nodes["segment/joint-gan/mixed-0.5/unet/aug0/s0"]
    assert mixed.body["source"] == "mixed" and mixed.body["synthetic_ratio"] == 0.5 and mixed.deps == {"cohort_id": "cohort/joint-gan/s0"}
    evaluation = nodes["evaluate/joint-gan/s0"]
    assert evaluation.deps["segmentation_run_ids"][0] == "segment/real/unet/aug0/s0"  # relative Dice's denominator
    assert set(evaluation.deps["segmentation_run_ids"][1:]) == {"segment/joint-gan/synthetic/unet/aug0/s0", mixed.id}


def test_keys_name_what_produced_a_job() -> None:
    spec = StudyCreate.model_validate(TWO_FAMILIES)
    keys = node_keys(expand(spec))
    assert keys == node_keys(expand(StudyCreate.model_validate(TWO_FAMILIES)))  # same request, same keys
    assert len(set(keys.values())) == len(keys)
    other = StudyCreate.model_validate({**TWO_FAMILIES, "families": [TWO_FAMILIES["families"][0] | {"training": {"steps": 7, "batch_size": 8}},
                                                                     TWO_FAMILIES["families"][1]]})
    changed = node_keys(expand(other))
    # joint-gan's generator changed: it and everything downstream of it get new keys; spade and real-only keep theirs
    assert changed["generator/joint-gan/s0"] != keys["generator/joint-gan/s0"]
    assert changed["segment/joint-gan/synthetic/unet/aug0/s0"] != keys["segment/joint-gan/synthetic/unet/aug0/s0"]
    assert changed["segment/spade/synthetic/unet/aug0/s0"] == keys["segment/spade/synthetic/unet/aug0/s0"]
    assert changed["segment/real/unet/aug0/s1"] == keys["segment/real/unet/aug0/s1"]


def test_a_grid_past_the_cap_is_refused_with_its_size() -> None:
    big = StudyCreate.model_validate({**TWO_FAMILIES, "seeds": list(range(10)), "arms": {"ratios": [0.1, 0.2, 0.3, 0.4, 0.5],
                                                                                          "augmentation": [False, True]},
                                      "segmentation": {"models": ["unet", "swin-unetr"]}})
    nodes = expand(big)
    assert len(nodes) == 10 * 2 * 2 + 2 * 10 * 3 + 2 * 10 * 2 * 2 * 6
    with pytest.raises(InvalidInput, match=f"expands into {len(nodes)} jobs .* more than the 500 allowed"):
        check_size(nodes, 500)
    check_size(nodes, len(nodes))


@pytest.mark.parametrize("change, named", [
    ({"arms": {"synthetic": False, "ratios": []}}, "only real data"),
    ({"families": [{"generator": {"family": "joint-gan"}}, {"generator": {"family": "joint-gan"}}]}, "labels must differ"),
    ({"seeds": [1, 1]}, "seeds must not repeat"),
    ({"arms": {"ratios": [0.5, 1.0]}}, "less than 1"),
    ({"families": []}, "at least 1"),
    ({"families": [{"generator": {"family": "vae"}}]}, "family"),
])
def test_bad_grids_are_refused(change: dict, named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        StudyCreate.model_validate({**TWO_FAMILIES, **change})


def test_every_arm_trains_by_the_same_early_stopping_rule() -> None:
    """Real data only (the denominator of relative Dice) and every other arm stop at their own validation
    plateau under one rule; each body is a valid segmentation request."""
    from medsynth.commands.requests import SegmentationCreate

    spec = StudyCreate.model_validate({**TWO_FAMILIES, "segmentation": {"models": ["unet"], "steps": 4000, "batch_size": 8,
                                                                         "patience": 4, "val_every": 50}})
    segments = [n for n in expand(spec).values() if n.kind.value == "train-segmenter"]
    rule = {"steps": 4000, "batch_size": 8, "early_stopping": True, "patience": 4, "val_every": 50, "min_steps": 0}
    assert {n.labels["arm"] for n in segments} == {"real", "synthetic", "mixed 0.5"}
    for node in segments:
        assert {k: node.body.get(k) for k in rule} == rule, node.id
        SegmentationCreate.model_validate({**node.body, **{k: "c" for k in node.deps}})
    assert StudyCreate.model_validate({k: v for k, v in TWO_FAMILIES.items() if k != "segmentation"}).segmentation.early_stopping


def test_a_fixed_step_study_asks_for_what_it_asked_before_early_stopping() -> None:
    """early_stopping false: the bodies (hence the jobs' keys) are those of studies before early stopping."""
    spec = StudyCreate.model_validate({**TWO_FAMILIES, "segmentation": {**TWO_FAMILIES["segmentation"], "early_stopping": False}})
    real = expand(spec)["segment/real/unet/aug0/s0"]
    assert real.body == {"dataset": "demo", "view_id": "v1", "steps": 4, "batch_size": 8, "source": "real", "model": "unet",
                         "augment": False, "seed": 0}


@pytest.mark.parametrize("segmentation, named", [
    ({"steps": 100, "val_every": 200}, "val_every"),
    ({"steps": 100, "min_steps": 200}, "min_steps"),
    ({"early_stopping": False, "patience": 3}, "early stopping only"),
    ({"patience": 0}, "patience"),
])
def test_bad_segmentation_rules_are_refused(segmentation: dict, named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        StudyCreate.model_validate({**TWO_FAMILIES, "segmentation": segmentation})


def test_a_study_recorded_before_early_stopping_keeps_its_jobs() -> None:
    """A study record's spec is re-expanded as the study advances: one written before early stopping (no
    segmentation.early_stopping) must keep fixed steps, its nodes' bodies and keys, not take the new default."""
    before = {**TWO_FAMILIES, "segmentation": {"models": ["unet"], "steps": 4, "batch_size": 8}}  # as such records hold it
    spec = StudyCreate.from_record(before)
    assert spec.segmentation.early_stopping is False
    fixed = StudyCreate.model_validate({**TWO_FAMILIES, "segmentation": {**before["segmentation"], "early_stopping": False},
                                        "fid_extractor": "per-seed"})  # such a record also predates one FID extractor per study
    assert node_keys(expand(spec)) == node_keys(expand(fixed))
    assert "early_stopping" not in expand(spec)["segment/real/unet/aug0/s0"].body
    recorded_now = StudyCreate.model_validate(before).model_dump(mode="json")  # a record written from now on has the key
    assert StudyCreate.from_record(recorded_now).segmentation.early_stopping is True


def test_every_evaluation_of_a_study_measures_through_one_reference_extractor() -> None:
    """All families and seeds: the encoder of the first seed's real-only run (first model, first augmentation
    setting), whatever seed the evaluation is of; each still lists its own seed's runs for the utility table."""
    spec = StudyCreate.model_validate({**TWO_FAMILIES, "seeds": [3, 1], "arms": {"ratios": [0.5], "augmentation": [True, False]},
                                       "segmentation": {"models": ["swin-unetr", "unet"], "steps": 4, "batch_size": 8}})
    assert spec.fid_extractor == "study"
    evaluations = [n for n in expand(spec).values() if n.kind.value == "evaluate"]
    assert len(evaluations) == 4
    for node in evaluations:
        assert node.deps["reference_run_id"] == "segment/real/swin-unetr/aug1/s3", node.id
        assert node.deps["segmentation_run_ids"][0] == f"segment/real/swin-unetr/aug1/s{node.labels['seed']}"
    from medsynth.commands.requests import EvaluationCreate
    EvaluationCreate.model_validate({**evaluations[0].body, "cohort_id": "c", "segmentation_run_ids": ["r"], "reference_run_id": "x"})


def test_a_study_recorded_before_one_extractor_keeps_per_seed_extractors_and_its_keys() -> None:
    """A record without fid_extractor: each seed's evaluation keeps its own real-only run (found among its runs, no
    reference_run_id), so its evaluations keep their keys; a record written now keeps the one extractor."""
    recorded_before = StudyCreate.model_validate(TWO_FAMILIES).model_dump(mode="json")
    del recorded_before["fid_extractor"]
    old = StudyCreate.from_record(recorded_before)
    assert old.fid_extractor == "per-seed"
    nodes = expand(old)
    assert all("reference_run_id" not in n.deps for n in nodes.values())
    keys, now = node_keys(nodes), node_keys(expand(StudyCreate.model_validate(TWO_FAMILIES)))
    evaluations = {i for i, n in nodes.items() if n.kind.value == "evaluate"}
    assert all(keys[i] != now[i] for i in evaluations)  # the new rule is a new evaluation job...
    assert all(keys[i] == now[i] for i in keys if i not in evaluations)  # ...and nothing else changes
    # the keys a record from before this field got: a hash of the evaluation's body and its deps' keys, no reference
    import hashlib
    import json
    node = nodes["evaluate/spade/s1"]
    deps = {"cohort_id": keys[node.deps["cohort_id"]], "segmentation_run_ids": [keys[d] for d in node.deps["segmentation_run_ids"]]}
    text = json.dumps({"kind": "evaluate", "body": node.body, "deps": deps}, sort_keys=True, separators=(",", ":"))
    assert keys["evaluate/spade/s1"] == hashlib.sha256(text.encode()).hexdigest()
    assert StudyCreate.from_record(StudyCreate.model_validate(TWO_FAMILIES).model_dump(mode="json")).fid_extractor == "study"
