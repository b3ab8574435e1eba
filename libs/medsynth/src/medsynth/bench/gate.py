"""``make bench-gate``: how well the memorization gate catches near-copies on real data.

Builds the gate over a prepared view's training split (as a cohort job does), then audits planted
copies of training images — exact, flipped, under Gaussian noise of several strengths, shifted by
whole pixels — and, as the false-positive side, held-out real images of other patients (the view's
test split: real, unseen, never copies). Prints one table: the fraction of each kind flagged, and
the build and audit times. Writes ``results.json`` and ``results.md`` under ``--out``.

It reads the store the local stack uses (``MEDSYNTH_HOME``); prepare a view first (``make demo``
or ``make bench-generators`` do).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from medsynth.core.errors import MedsynthError

from medsynth.bench import save_results

NOISE = (0.01, 0.02, 0.05)
SHIFTS = (1, 2)


def planted(train: np.ndarray, rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    """Copies of ``count`` random training images under each perturbation, by name."""
    picked = train[rng.choice(len(train), size=min(count, len(train)), replace=False)]
    kinds = {"exact": picked, "hflip": picked[:, :, :, ::-1], "vflip": picked[:, :, ::-1, :]}
    for sigma in NOISE:
        kinds[f"noise σ={sigma:g}"] = np.clip(picked + rng.normal(0.0, sigma, picked.shape), 0.0, 1.0)
    for shift in SHIFTS:
        kinds[f"shift {shift} px"] = np.roll(picked, shift, axis=3)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in kinds.items()}


def run(store, dataset: str, view_id: str, count: int, seed: int) -> dict[str, Any]:
    from medsynth.jobs.artifacts import view_splits
    from medsynth.sampling.gate import GateOptions, ReleaseGate, ReleasePolicy

    _, splits = view_splits(store, dataset, view_id, splits=("train", "test"))
    train, test = splits["train"]["images"], splits["test"]["images"]
    began = time.perf_counter()
    gate = ReleaseGate.for_training_images(train, GateOptions(policy=ReleasePolicy.report))
    build_s = time.perf_counter() - began
    rng = np.random.default_rng(seed)
    rows = []
    held_out = test[rng.choice(len(test), size=min(count, len(test)), replace=False)].astype(np.float32)
    for kind, images in {**planted(train, rng, count), "held-out real (other patients)": held_out}.items():
        began, before = time.perf_counter(), len(gate.verdicts)
        gate.check(before, 0, images, len(images))
        flagged = sum(v.flagged for v in gate.verdicts[before:])
        rows.append({"kind": kind, "n": len(images), "flagged": flagged,
                     "audit_s_per_image": (time.perf_counter() - began) / len(images)})  # fmt: skip
    ref = gate.reference
    return {"dataset": dataset, "view_id": view_id, "train_images": ref.n_train, "build_s": build_s,
            "thresholds": {"pixel": ref.threshold, "lowpass": gate.lowpass_reference.threshold}, "rows": rows}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# bench-gate — {result['dataset']} view {result['view_id']}: {result['train_images']} training images, "
             f"reference built in {result['build_s']:.1f} s; thresholds pixel {result['thresholds']['pixel']:.4f}, "
             f"low-pass {result['thresholds']['lowpass']:.4f}", "",
             "| audited | n | flagged | ms per image |", "|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        lines.append(f"| {r['kind']} | {r['n']} | {r['flagged']} ({r['flagged'] / r['n']:.0%}) | {r['audit_s_per_image'] * 1000:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medsynth-bench-gate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--view-id", required=True)
    parser.add_argument("--count", type=int, default=200, help="planted copies per perturbation (and held-out images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-results/gate"))
    args = parser.parse_args(argv)
    from medsynth.core.settings import load_settings
    from medsynth.store import open_store

    try:
        result = run(open_store(load_settings()), args.dataset, args.view_id, args.count, args.seed)
    except MedsynthError as exc:
        print(f"bench-gate: error: {exc}", file=sys.stderr)
        return 2
    save_results(args.out, result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
