"""A study's grid as a graph of ordinary jobs, each keyed by a hash of everything that produces it.

Per family and seed: a generator, its cohort and (unless no arm uses it) an evaluation. Per
segmenter model, augmentation setting and seed: a real-only segmentation run, and per family one run
on the cohort alone (``synthetic``), one per mixing ratio (``mixed r``) and one per number of synthetic
patients added to the real data (``+N patients``). Every segmentation run trains by the same rule
(:class:`~medsynth.studies.spec.StudySegmentation`: by default early stopping at its own validation
plateau, capped at ``steps``), the real-only baseline included. Every evaluation measures fidelity
through one reference extractor, the encoder of the first seed's real-only run (first model, first
augmentation setting: ``reference_run_id``), so that all families and seeds are scored with the same
yardstick; a study recorded before that (``fid_extractor`` "per-seed") keeps each seed's own real-only
run, found among its evaluation's runs, and its keys. A node's request body is
complete but for the ids of the jobs it needs (``deps``: body field → node), filled in when those
finish. Its key hashes its kind, body and its dependencies' keys, so that one request made twice, in
one study or two, is one job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from medsynth.studies.spec import StudyCreate
from medsynth.bus.messages import JobKind
from medsynth.core.errors import InvalidInput

REAL = "real"


@dataclass
class Node:
    """One job of a study: ``body`` is its request body without ``deps``' fields; ``labels`` place it
    in the grid (family, seed, model, augment, arm)."""

    id: str
    kind: JobKind
    body: dict[str, Any]
    deps: dict[str, str | list[str]] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)

    def needs(self) -> list[str]:
        return [d for value in self.deps.values() for d in (value if isinstance(value, list) else [value])]


def arm_name(source: str, ratio: float | None = None, patients: int | None = None) -> str:
    if patients is not None:
        return f"+{patients} patients"
    return {"real": "real", "synthetic": "synthetic"}.get(source) or f"mixed {ratio:g}"


def expand(spec: StudyCreate) -> dict[str, Node]:
    """The study's nodes in an order where every node comes after those it needs."""
    nodes: dict[str, Node] = {}

    def add(node: Node) -> None:
        nodes[node.id] = node

    # one training rule for every arm (early stopping at the validation plateau by default): StudySegmentation
    seg_common = {"dataset": spec.dataset, "view_id": spec.view_id, **spec.segmentation.request_fields()}
    for seed in spec.seeds:
        for model in spec.segmentation.models:
            for augment in spec.arms.augmentation:
                add(Node(f"segment/{REAL}/{model.value}/aug{int(augment)}/s{seed}", JobKind.train_segmenter,
                         {**seg_common, "source": "real", "model": model.value, "augment": augment, "seed": seed},
                         labels={"family": None, "arm": "real", "model": model.value, "augment": augment, "seed": seed}))
    extractor_model = spec.segmentation.models[0].value  # the evaluation's in-domain encoder
    reference = f"segment/{REAL}/{extractor_model}/aug{int(spec.arms.augmentation[0])}/s{spec.seeds[0]}"
    for family in spec.families:
        name = family.name
        for seed in spec.seeds:
            gen, cohort = f"generator/{name}/s{seed}", f"cohort/{name}/s{seed}"
            training = family.training.model_copy(update={"seed": seed})
            add(Node(gen, JobKind.train_generator,
                     {"dataset": spec.dataset, "view_id": spec.view_id, "generator": family.generator.model_dump(mode="json"),
                      "training": training.model_dump(mode="json"), "condition_on": family.condition_on.value},
                     labels={"family": name, "seed": seed}))
            add(Node(cohort, JobKind.sample_cohort,
                     {"count": spec.cohort_size, "seed": seed, "mask_source": family.mask_source.value, "formats": ["nifti"]},
                     deps={"generator_id": gen}, labels={"family": name, "seed": seed}))
            runs = []
            for model in spec.segmentation.models:
                for augment in spec.arms.augmentation:
                    arms = (([("synthetic", None, None)] if spec.arms.synthetic else []) + [("mixed", r, None) for r in spec.arms.ratios]
                            + [("mixed", None, n) for n in spec.arms.synthetic_patients])
                    for source, ratio, patients in arms:
                        arm = arm_name(source, ratio, patients)
                        node_id = f"segment/{name}/{arm.replace(' ', '-')}/{model.value}/aug{int(augment)}/s{seed}"
                        body = {**seg_common, "source": source, "model": model.value, "augment": augment, "seed": seed}
                        if ratio is not None:
                            body["synthetic_ratio"] = ratio
                        if patients is not None:
                            body["synthetic_patients"] = patients
                        add(Node(node_id, JobKind.train_segmenter, body, deps={"cohort_id": cohort},
                                 labels={"family": name, "arm": arm, "ratio": ratio, "synthetic_patients": patients,
                                         "model": model.value, "augment": augment, "seed": seed}))
                        runs.append(node_id)
            real_run = f"segment/{REAL}/{extractor_model}/aug{int(spec.arms.augmentation[0])}/s{seed}"
            deps: dict[str, str | list[str]] = {"cohort_id": cohort, "segmentation_run_ids": [real_run, *runs]}
            if spec.fid_extractor == "study":  # one yardstick for the study (per-seed: the real-only run listed first)
                deps["reference_run_id"] = reference
            add(Node(f"evaluate/{name}/s{seed}", JobKind.evaluate, {"max_samples": spec.max_eval_samples},
                     deps=deps, labels={"family": name, "seed": seed}))
    return nodes


def check_size(nodes: dict[str, Node], max_jobs: int) -> None:
    if len(nodes) > max_jobs:
        counts: dict[str, int] = {}
        for node in nodes.values():
            counts[node.kind.value] = counts.get(node.kind.value, 0) + 1
        raise InvalidInput(f"this study expands into {len(nodes)} jobs ({counts}), more than the {max_jobs} allowed "
                           "(MEDSYNTH_STUDY_MAX_JOBS): fewer families, seeds, models, ratios or augmentation settings")


def node_keys(nodes: dict[str, Node]) -> dict[str, str]:
    """Each node's content key: a hash of its kind, body and the keys of the nodes it needs."""
    keys: dict[str, str] = {}
    for node in nodes.values():
        deps = {name: ([keys[d] for d in value] if isinstance(value, list) else keys[value]) for name, value in node.deps.items()}
        text = json.dumps({"kind": node.kind.value, "body": node.body, "deps": deps}, sort_keys=True, separators=(",", ":"))
        keys[node.id] = hashlib.sha256(text.encode()).hexdigest()
    return keys
