"""``make bench-gate``: how well the memorization gate catches copies in disguise on real data.

Builds the gate over a prepared view's training split (images, masks and patients, as a cohort job
does), then audits, with their masks:

* **planted copies**: ``--count`` (200) random training slices under each disguise of
  :data:`DISGUISES` — exact, flipped, shifted by 1, 2 and 4 px, rotated, rescaled, cropped and
  resized back, re-toned (gamma, contrast) and noised; a geometric disguise moves the slice's mask
  with it (nearest-neighbour), an intensity one leaves it as it was;
* **planted mask copies**: held-out images paired with training masks, exact or under a geometric
  disguise, and training masks under the ``real-deformed`` mask source's default deformation (what
  SPADE and mask-conditioned diffusion cohorts release): the mask audit alone;
* **held-out real** slices: every slice of the view's test split (patients the training split does
  not have: real, unseen, never copies), the false-positive side.

Prints one table: the fraction of each kind flagged (by the image, by the mask, either), the audit
time per sample, and the gate's build time; then the audit time per sample against 5,000 reference
slices (when the training split has fewer, the view's validation slices — other patients — are
added to reach 5,000). Writes ``results.json`` and ``results.md`` under ``--out``.

It reads the store the local stack uses (``MEDSYNTH_HOME``, or ``MEDSYNTH_STORE_ROOT``); prepare a
view first (``make demo`` or ``make bench-generators`` do).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.bench import save_results
from medsynth.core.errors import MedsynthError

NOISE = (0.01, 0.02, 0.05)
SHIFTS = (1, 2, 4)
SUBPIXEL = 2.5  # a shift by a fraction of a pixel: along one axis (either sign), up to it along the other
CROP = 0.9  # of the side kept by a crop, before it is resized back
GAMMA = (0.6, 1.6)  # log-uniform
CONTRAST = (0.6, 1.4)  # factor about mid-grey, uniform; then a brightness offset of up to ±BRIGHTNESS, clipped to [0, 1]
BRIGHTNESS = 0.15
TIMING_REFERENCE = 5000

Disguise = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


# --- disguises: (images (N, 1, S, S) in [0, 1], masks (N, S, S)) → the same, disguised -------------


def _affine(images: np.ndarray, masks: np.ndarray, angle: np.ndarray | float = 0.0, scale: np.ndarray | float = 1.0,
            shift: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Rotate by ``angle`` degrees and magnify by ``scale`` about the centre, then shift by whole
    pixels: images bilinear (border replicated), masks nearest-neighbour (background outside)."""
    n, size = len(images), images.shape[-1]
    a = np.radians(np.broadcast_to(np.asarray(angle, dtype=np.float64), (n,)))
    s = np.broadcast_to(np.asarray(scale, dtype=np.float64), (n,))
    theta = np.zeros((n, 2, 3))
    theta[:, 0, 0], theta[:, 0, 1] = np.cos(a) / s, -np.sin(a) / s
    theta[:, 1, 0], theta[:, 1, 1] = np.sin(a) / s, np.cos(a) / s
    if shift is not None:
        theta[:, 0, 2], theta[:, 1, 2] = -2.0 * shift[0] / size, -2.0 * shift[1] / size
    grid = F.affine_grid(torch.from_numpy(theta).float(), [n, 1, size, size], align_corners=False)
    image = F.grid_sample(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)), grid, mode="bilinear",
                          padding_mode="border", align_corners=False)  # fmt: skip
    mask = F.grid_sample(torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))[:, None], grid, mode="nearest",
                         padding_mode="zeros", align_corners=False)  # fmt: skip
    return image.numpy(), mask[:, 0].round().numpy().astype(masks.dtype)


def _shift(pixels: int) -> Disguise:
    """Moved by ``pixels`` along one axis (either sign) and by 0..``pixels`` along the other (either
    sign), whole pixels: the edge is replicated in the image, background in the mask."""

    def apply(images: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        n = len(images)
        major = rng.choice([-1, 1], n) * pixels
        minor = rng.integers(-pixels, pixels + 1, n)
        along_x = rng.integers(0, 2, n).astype(bool)
        dx, dy = np.where(along_x, major, minor), np.where(along_x, minor, major)
        out_i, out_m = np.empty_like(images), np.empty_like(masks)
        p = pixels
        for k in range(n):
            img = np.pad(images[k], ((0, 0), (p, p), (p, p)), mode="edge")
            msk = np.pad(masks[k], ((p, p), (p, p)))
            size = images.shape[-1]
            out_i[k] = img[:, p - dy[k] : p - dy[k] + size, p - dx[k] : p - dx[k] + size]
            out_m[k] = msk[p - dy[k] : p - dy[k] + size, p - dx[k] : p - dx[k] + size]
        return out_i, out_m

    return apply


def _crop(images: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random window (side: :data:`CROP` of the image's or more, at a random place) resized back
    (images bilinear, antialiased; masks nearest): a scaling by up to 1/:data:`CROP` and a shift,
    often by a fraction of a pixel."""
    size = images.shape[-1]
    out_i, out_m = np.empty_like(images), np.empty_like(masks)
    for k in range(len(images)):
        side = int(rng.integers(math.ceil(CROP * size), size))
        y, x = rng.integers(0, size - side + 1, 2)
        window = torch.from_numpy(np.ascontiguousarray(images[k : k + 1, :, y : y + side, x : x + side], dtype=np.float32))
        out_i[k] = F.interpolate(window, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0].numpy()
        label = torch.from_numpy(np.ascontiguousarray(masks[k, y : y + side, x : x + side], dtype=np.float32))[None, None]
        out_m[k] = F.interpolate(label, size=(size, size), mode="nearest")[0, 0].numpy().astype(masks.dtype)
    return out_i, out_m


def _gamma(images: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    g = np.exp(rng.uniform(np.log(GAMMA[0]), np.log(GAMMA[1]), len(images)))[:, None, None, None]
    return np.clip(images, 0.0, 1.0) ** g, masks


def _contrast(images: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    factor = rng.uniform(*CONTRAST, len(images))[:, None, None, None]
    offset = rng.uniform(-BRIGHTNESS, BRIGHTNESS, len(images))[:, None, None, None]
    return np.clip((images - 0.5) * factor + 0.5 + offset, 0.0, 1.0), masks


def _noise(sigma: float) -> Disguise:
    return lambda images, masks, rng: (np.clip(images + rng.normal(0.0, sigma, images.shape), 0.0, 1.0), masks)


def _sign(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice([-1.0, 1.0], n)


#: Each disguise of a planted copy, by name (the bench's rows, in order).
DISGUISES: dict[str, Disguise] = {
    "exact": lambda i, m, rng: (i, m),
    "hflip": lambda i, m, rng: (i[:, :, :, ::-1], m[:, :, ::-1]),
    "vflip": lambda i, m, rng: (i[:, :, ::-1, :], m[:, ::-1, :]),
    **{f"shift {p} px": _shift(p) for p in SHIFTS},
    f"shift {SUBPIXEL:g} px (bilinear)": lambda i, m, rng: _affine(i, m, shift=(_sign(rng, len(i)) * SUBPIXEL, rng.uniform(-SUBPIXEL, SUBPIXEL, len(i)))),
    "rotate ±10°": lambda i, m, rng: _affine(i, m, angle=10.0 * _sign(rng, len(i))),
    "rotate U(-10°, 10°)": lambda i, m, rng: _affine(i, m, angle=rng.uniform(-10.0, 10.0, len(i))),
    "scale 0.9": lambda i, m, rng: _affine(i, m, scale=0.9),
    "scale 1.1": lambda i, m, rng: _affine(i, m, scale=1.1),
    "scale U(0.9, 1.1)": lambda i, m, rng: _affine(i, m, scale=rng.uniform(0.9, 1.1, len(i))),
    f"crop ≥{CROP:.0%} + resize": _crop,
    f"gamma {GAMMA[0]:g}-{GAMMA[1]:g}": _gamma,
    f"contrast x{CONTRAST[0]:g}-{CONTRAST[1]:g} ±{BRIGHTNESS:g}": _contrast,
    **{f"noise σ={s:g}": _noise(s) for s in NOISE},
}
#: The geometric disguises of a planted mask copy (beside a held-out image).
MASK_DISGUISES = ("exact", "hflip", "shift 4 px", "rotate ±10°", "scale U(0.9, 1.1)")


def disguise(kind: str, images: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``images`` (N, 1, S, S) in [0, 1] and their ``masks`` (N, S, S) under the disguise ``kind``."""
    out_i, out_m = DISGUISES[kind](np.asarray(images, dtype=np.float32), np.asarray(masks), rng)
    return np.ascontiguousarray(out_i, dtype=np.float32), np.ascontiguousarray(out_m, dtype=np.asarray(masks).dtype)


def real_deformed(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``masks`` under the real-deformed mask source's default deformation (SPADE, mask-conditioned diffusion)."""
    from medsynth.generators.real_deformed import Deformation, RealDeformedOptions
    from medsynth.models.spade import one_hot

    default = {name: f.default for name, f in RealDeformedOptions.model_fields.items()}
    labels = int(masks.max()) + 1
    deform = Deformation(masks.shape[-1], **{k: default[k] for k in ("rotation", "scale", "translation", "elastic")})
    n, g = len(masks), default["elastic_grid"]
    affine = torch.from_numpy(rng.standard_normal((n, 4))).float()
    field = torch.from_numpy(rng.standard_normal((n, 2, g, g))).float()
    onehot = one_hot(torch.from_numpy(masks.astype(np.int64)), labels, torch.float32)
    with torch.no_grad():
        return deform(onehot, affine, field).argmax(dim=1).numpy().astype(masks.dtype)


# --- the bench --------------------------------------------------------------------------------------


def _audit(gate, images: np.ndarray, masks: np.ndarray) -> dict[str, Any]:
    """One row: the gate's check of ``images`` with ``masks``, wall-clock and CPU (this process) time per sample."""
    began, cpu, before = time.perf_counter(), time.process_time(), len(gate.verdicts)
    gate.check(before, 0, images, len(images), masks=masks)
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu
    verdicts = gate.verdicts[before:]
    return {"n": len(images), "flagged": sum(v.flagged for v in verdicts), "image_flagged": sum(v.image_flagged for v in verdicts),
            "mask_flagged": sum(v.mask_flagged for v in verdicts), "masks_audited": sum(v.mask_distance is not None for v in verdicts),
            "ms_per_sample": seconds / len(images) * 1000, "cpu_ms_per_sample": cpu_seconds / len(images) * 1000}  # fmt: skip


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip


def run(store, dataset: str, view_id: str, count: int, seed: int, echo=print) -> dict[str, Any]:
    from medsynth.jobs.artifacts import view_splits
    from medsynth.sampling.gate import GateOptions, ReleaseGate, ReleasePolicy

    _, splits = view_splits(store, dataset, view_id, splits=("train", "val", "test"))
    train, val, test = splits["train"], splits["val"], splits["test"]
    machine_before = _machine()
    options = GateOptions(policy=ReleasePolicy.report)
    began = time.perf_counter()
    gate = ReleaseGate.for_training_images(train["images"], options, masks=train["masks"], patients=train["patients"])
    build_s = time.perf_counter() - began
    echo(f"gate over {len(train['images'])} training slices built in {build_s:.1f} s")
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(train["images"]), size=min(count, len(train["images"])), replace=False)
    images, masks = train["images"][picked].astype(np.float32), train["masks"][picked]
    held = rng.choice(len(test["images"]), size=min(count, len(test["images"])), replace=False)
    rows = []
    for kind in DISGUISES:
        rows.append({"kind": kind, "group": "planted copy", **_audit(gate, *disguise(kind, images, masks, rng))})
        echo(_line(rows[-1]))
    for kind in MASK_DISGUISES:
        _, moved = disguise(kind, images, masks, rng)
        rows.append({"kind": f"mask {kind}", "group": "planted mask copy (held-out image)",
                     **_audit(gate, test["images"][held].astype(np.float32), moved)})  # fmt: skip
        echo(_line(rows[-1]))
    rows.append({"kind": "mask real-deformed (default deformation)", "group": "planted mask copy (held-out image)",
                 **_audit(gate, test["images"][held].astype(np.float32), real_deformed(masks, rng))})  # fmt: skip
    echo(_line(rows[-1]))
    patients = sorted(set(map(str, test["patients"])))
    rows.append({"kind": f"held-out real (all {len(test['images'])} test slices, {len(patients)} other patients)", "group": "held-out real",
                 **_audit(gate, test["images"].astype(np.float32), test["masks"])})  # fmt: skip
    echo(_line(rows[-1]))
    timing = _timing_5000(train, val, test, options, echo)
    return {"dataset": dataset, "view_id": view_id, "train_images": gate.images.n_reference, "train_masks": gate.masks.n_reference,
            "train_patients": len(set(map(str, train["patients"]))), "build_s": build_s,
            "thresholds": {"image": gate.images.threshold, "mask": gate.masks.threshold}, "options": options.model_dump(mode="json"),
            "audits": {"image": gate.images.summary(), "mask": gate.masks.summary()}, "rows": rows, "timing_5000": timing,
            "disguises": _described(), "machine": {"before": machine_before, "after": _machine()}}  # fmt: skip


def _timing_5000(train: dict, val: dict, test: dict, options, echo) -> dict[str, Any]:
    """The audit time per sample (image and mask) against :data:`TIMING_REFERENCE` reference slices."""
    from medsynth.sampling.gate import ReleaseGate

    n_train = len(train["images"])
    extra = max(0, TIMING_REFERENCE - n_train)
    if extra > len(val["images"]):
        return {"skipped": f"the training and validation splits have fewer than {TIMING_REFERENCE} slices"}
    take = np.arange(extra)
    images = np.concatenate([train["images"], val["images"][take]])[:TIMING_REFERENCE]
    masks = np.concatenate([train["masks"], val["masks"][take]])[:TIMING_REFERENCE]
    patients = np.concatenate([train["patients"], val["patients"][take]])[:TIMING_REFERENCE]
    began = time.perf_counter()
    gate = ReleaseGate.for_training_images(images, options, masks=masks, patients=patients)
    build_s = time.perf_counter() - began
    row = _audit(gate, test["images"].astype(np.float32), test["masks"])
    how = (f"the {n_train} training slices and the first {extra} validation slices (other patients)" if extra
           else f"the first {TIMING_REFERENCE} training slices")  # fmt: skip
    echo(f"against {len(images)} reference slices ({how}): {row['ms_per_sample']:.2f} ms per sample ({row['cpu_ms_per_sample']:.2f} ms CPU) "
         f"over the {row['n']} test slices")
    return {"reference_slices": len(images), "how": how, "build_s": build_s, "n": row["n"], "ms_per_sample": row["ms_per_sample"],
            "cpu_ms_per_sample": row["cpu_ms_per_sample"], "flagged": row["flagged"]}  # fmt: skip


def _described() -> dict[str, str]:
    return {
        "shift": f"whole pixels: {SHIFTS} along one axis (either sign) and 0..that along the other; edge replicated (mask: background)",
        "shift (bilinear)": f"{SUBPIXEL:g} px along one axis (either sign), uniform in ±{SUBPIXEL:g} px along the other, bilinear",
        "rotate / scale": "about the centre, bilinear with the border replicated (mask: nearest, background outside)",
        "crop": f"a random window of {CROP:.0%} of the side or more (side and place uniform), resized back (bilinear, antialiased; mask nearest)",
        "gamma": f"x ** g, g log-uniform in [{GAMMA[0]:g}, {GAMMA[1]:g}]",
        "contrast": f"(x - 0.5) * c + 0.5 + b, c uniform in [{CONTRAST[0]:g}, {CONTRAST[1]:g}], b in ±{BRIGHTNESS:g}, clipped to [0, 1]",
        "noise": "Gaussian, clipped to [0, 1] (images in [0, 1])",
        "masks": "a geometric disguise moves the mask with the image; an intensity disguise leaves it",
        "mask copies": "a training mask (as named) beside a held-out test image: only the mask is a copy",
    }


def _line(row: dict[str, Any]) -> str:
    return (f"{row['kind']}: {row['flagged']}/{row['n']} flagged (image {row['image_flagged']}, mask {row['mask_flagged']} "
            f"of {row['masks_audited']} audited), {row['ms_per_sample']:.2f} ms per sample ({row['cpu_ms_per_sample']:.2f} CPU)")  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    t, timing, machine = result["thresholds"], result["timing_5000"], result["machine"]
    lines = [f"# bench-gate — {result['dataset']} view {result['view_id']}: {result['train_images']} training slices "
             f"({result['train_patients']} patients, {result['train_masks']} masks), gate built in {result['build_s']:.1f} s; "
             f"distance thresholds image {t['image']:.4f}, mask {t['mask']:.4f}", "",
             "| audited | n | flagged | by image | by mask (of audited) | ms per sample (CPU) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        lines.append(f"| {r['kind']} | {r['n']} | {r['flagged']} ({r['flagged'] / r['n']:.1%}) | {r['image_flagged']} | "
                     f"{r['mask_flagged']} (of {r['masks_audited']}) | {r['ms_per_sample']:.2f} ({r['cpu_ms_per_sample']:.2f}) |")  # fmt: skip
    lines.append("")
    if "ms_per_sample" in timing:
        lines.append(f"Against {timing['reference_slices']} reference slices ({timing['how']}): {timing['ms_per_sample']:.2f} ms per "
                     f"sample wall-clock ({timing['cpu_ms_per_sample']:.2f} ms CPU), image and mask, over the {timing['n']} test slices "
                     f"({timing['flagged']} flagged); that gate built in {timing['build_s']:.1f} s.")  # fmt: skip
    else:
        lines.append(f"No timing against {TIMING_REFERENCE} slices: {timing['skipped']}.")
    lines.append(f"Machine: {machine['before']['cpus']} CPUs, {machine['before']['torch_threads']} torch threads; load average "
                 f"{machine['before']['load_average']} before, {machine['after']['load_average']} after.")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medsynth-bench-gate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--view-id", required=True)
    parser.add_argument("--count", type=int, default=200, help="planted copies per disguise (and held-out images beside planted masks)")
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
