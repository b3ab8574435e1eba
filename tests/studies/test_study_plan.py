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
    assert evaluation.deps["segmentation_run_ids"][0] == "segment/real/unet/aug0/s0"  # its FID encoder: the real-only run
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
