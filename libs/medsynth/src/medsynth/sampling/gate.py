"""The memorization gate: every cohort is audited against its generator's training images before
it is released, and a policy decides what happens to near-copies.

Audit (:mod:`medsynth.metrics.copies`): each drawn sample's image is searched against every training
image under the transformations a copy survives — shifts of up to ±4 px, the four flips, rotations of
up to ±10°, scalings of 0.9–1.1 (so crops resized back), and any monotone intensity change (gamma,
contrast, brightness: the images are compared as per-image ranks), with pixel noise blurred away —
and its *distance* to the closest training image found (``sqrt(2 - 2 r)``, ``r`` the normalised
cross-correlation there) is compared with how close real images of *other* patients get under the
same search: the audit's calibration searches (up to 1,000 of) the training images, each against
the other patients' training images. A sample at most ``threshold_ratio`` × the
``threshold_quantile`` quantile of those distances from a training image is *flagged*. The sample's
mask is audited the same way against the training masks (a released training mask is patient data
too), with its own calibration; masks with less than 1% of their pixels labelled are not audited
(another patient's mask matches so small a mask as closely as a copy would). A draw is flagged when
its image or its mask is. Constant (blank) training images and empty training masks are left out of
the references: they carry no patient.

Measured on hippocampus (``make bench-gate``, ``bench-results/hippocampus-gate/``): 200 of 200
planted copies of every kind above are flagged, 2 of 955 real slices of held-out patients (by their
masks); about 5 ms per draw on 2 cores against 5,000 training slices. Not searched: larger moves,
shears, elastic deformations, crops keeping less than about 90% of the side; mask copies under
rotation or rescaling are caught less often than images (about a third: nearest-neighbour
resampling of a small blob changes it as much as another patient's blob differs). A mask copied as
it is, flipped or moved by whole pixels is found exactly.

Policies, chosen per cohort:

* ``report``: every draw is released; flagged ones are marked in the manifest.
* ``filter`` (default): flagged draws are never written; fresh draws (the next sample indices of the
  same seed) replace them until the count is met. At most ``ceil(max_extra_draws × count)``
  replacement draws are made; a cohort that cannot be filled within that cap fails.
* ``block``: the cohort fails when more than ``max_flagged_fraction`` of its draws are flagged.

A failed cohort leaves nothing behind (the cohort writer rolls back). Flagged samples' pixels are
never stored under the cohort's prefix; the audit's figure of the closest pairs (synthetic beside
training image) is stored apart from the cohort (``audits/<cohort>/closest_pairs.png``) because it
shows real patients' images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medsynth.core.errors import InvalidInput, PermanentJobError
from medsynth.metrics.copies import FLIP_NAMES, CopyAudit, CopyVerdicts
from medsynth.v1 import jobs_pb2

WORST_PAIRS = 8
CALIBRATION_SIZE = 1000  # training images (and masks) the thresholds are calibrated on, at most


class ReleasePolicy(str, Enum):
    report = "report"
    filter = "filter"
    block = "block"


class GateOptions(BaseModel):
    """What a cohort request says about its release (all fields have defaults: the gate always runs)."""

    model_config = ConfigDict(extra="forbid")

    policy: ReleasePolicy = Field(
        ReleasePolicy.filter,
        description="report: audit only; filter: drop flagged draws and draw replacements; block: fail above max_flagged_fraction.",
    )
    max_flagged_fraction: float = Field(0.0, ge=0, le=1, description="block: the largest fraction of flagged draws that still releases.")
    max_extra_draws: float = Field(1.0, ge=0, le=10, description="filter: replacement draws allowed, as a fraction of count.")
    threshold_ratio: float = Field(0.8, gt=0, lt=1, description="Flag at <= ratio x the quantile of real images' distances to other patients' training images (0 < ratio < 1).")
    threshold_quantile: float = Field(0.01, gt=0, lt=1, description="The quantile of those distances the threshold is anchored to (0 < quantile < 1).")


class ReleaseRefused(PermanentJobError):
    """The gate's policy refuses the cohort (blocked, or a filter that cannot fill the count)."""


def gate_to_proto(options: GateOptions) -> jobs_pb2.ReleaseGate:
    return jobs_pb2.ReleaseGate(
        policy=options.policy.value, max_flagged_fraction=options.max_flagged_fraction, max_extra_draws=options.max_extra_draws,
        threshold_ratio=options.threshold_ratio, threshold_quantile=options.threshold_quantile,
    )  # fmt: skip


def gate_from_proto(message: jobs_pb2.ReleaseGate) -> GateOptions:
    """The options of a command (unset fields: the defaults); :class:`InvalidInput` names a bad one."""
    fields = ("max_flagged_fraction", "max_extra_draws", "threshold_ratio", "threshold_quantile")
    values: dict[str, Any] = {f: getattr(message, f) for f in fields if message.HasField(f)}
    if message.policy:
        values["policy"] = message.policy
    try:
        return GateOptions.model_validate(values)
    except ValueError as exc:
        raise InvalidInput(f"invalid release gate: {exc}") from None


@dataclass
class Verdict:
    """One draw's audit: the closest training image (and mask) found, and whether it is flagged.
    ``mask_*`` are None when the draw's mask was not audited (no masks, or too small a mask)."""

    index: int
    batch: int
    flagged: bool
    image_flagged: bool
    distance: float
    train_index: int
    transform: str
    mask_flagged: bool = False
    mask_distance: float | None = None
    mask_train_index: int | None = None
    mask_transform: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "batch": self.batch, "flagged": self.flagged, "image_flagged": self.image_flagged,
                "distance": self.distance, "train_index": self.train_index, "transform": self.transform,
                "mask_flagged": self.mask_flagged, "mask_distance": self.mask_distance,
                "mask_train_index": self.mask_train_index, "mask_transform": self.mask_transform}  # fmt: skip


@dataclass
class ReleaseGate:
    """Audits a cohort's draws batch by batch against the training images (and masks), and applies the policy.

    Build it with :meth:`for_training_images`; the cohort writer calls :meth:`next_batch` for the
    next batch, :meth:`check` on each drawn batch, and :meth:`summary` for the manifest.
    """

    options: GateOptions
    images: CopyAudit
    masks: CopyAudit | None
    train_images: np.ndarray  # (M, 1, S, S) as given: the closest-pairs figure
    train_masks: np.ndarray | None
    masks_not_audited: str | None = None  # why, when the gate has no mask audit
    verdicts: list[Verdict] = field(default_factory=list)
    _scores: list[float] = field(default_factory=list)  # of each verdict: see _score
    _worst: dict[int, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)  # draw index → (image, mask), the worst so far

    @classmethod
    def for_training_images(cls, train_images: np.ndarray, options: GateOptions, *, masks: np.ndarray | None = None,
                            patients: np.ndarray | None = None) -> ReleaseGate:  # fmt: skip
        """The gate over a view's training split: its images (N, 1, S, S), and optionally its masks
        (N, S, S) (then audited too) and the patient of each image (calibration across patients; without
        them each image stands for its own patient, which makes the thresholds stricter)."""
        images = np.asarray(train_images, dtype=np.float32)
        if images.ndim == 3:
            images = images[:, None]
        if images.ndim != 4 or images.shape[1] != 1:
            raise InvalidInput(f"training images must be (N, 1, S, S), got shape {images.shape}.")
        if masks is not None and np.shape(masks) != (len(images), *images.shape[2:]):
            raise InvalidInput(f"training masks must be (N, S, S) like the images {images.shape}, got shape {np.shape(masks)}.")
        rule = {"threshold_ratio": options.threshold_ratio, "threshold_quantile": options.threshold_quantile,
                "calibration_size": CALIBRATION_SIZE}  # fmt: skip
        try:
            image_audit = CopyAudit.of_images(images, patients, **rule)
        except InvalidInput as exc:
            raise InvalidInput(f"the memorization gate cannot audit against these training images: {exc}") from None
        mask_audit, why = None, "no training masks" if masks is None else None
        if masks is not None:
            try:
                mask_audit = CopyAudit.of_masks(masks, patients, **rule)
            except InvalidInput as exc:  # e.g. no training mask large enough: the images are still audited
                why = str(exc)
        return cls(options, image_audit, mask_audit, images, None if masks is None else np.asarray(masks), masks_not_audited=why)

    # --- planning draws ---------------------------------------------------------------------------

    def max_draws(self, count: int) -> int:
        """How many samples may be drawn for a cohort of ``count``."""
        if self.options.policy is ReleasePolicy.filter:
            return count + math.ceil(self.options.max_extra_draws * count)
        return count

    def released(self) -> int:
        if self.options.policy is ReleasePolicy.filter:
            return sum(not v.flagged for v in self.verdicts)
        return len(self.verdicts)

    def next_batch(self, count: int, batch_size: int) -> tuple[int, int] | None:
        """The next ``(start, stop)`` draw indices, or None when the cohort is complete.

        Raises :class:`ReleaseRefused` when a filter's cap is spent before the count is met."""
        drawn, needed = len(self.verdicts), count - self.released()
        if needed <= 0:
            return None
        if drawn >= self.max_draws(count):
            raise ReleaseRefused(
                f"memorization gate (filter): {self.n_flagged} of {drawn} draws were near-copies of training images; "
                f"{self.released()} of {count} samples passed and the cap of {self.max_draws(count) - count} replacement "
                f"draws (max_extra_draws={self.options.max_extra_draws:g}) is spent. The generator memorizes: retrain it "
                "(more data, fewer steps, augmentation), or ask for fewer samples."
            )
        return drawn, drawn + min(batch_size, needed, self.max_draws(count) - drawn)

    # --- auditing ---------------------------------------------------------------------------------

    @property
    def n_flagged(self) -> int:
        return sum(v.flagged for v in self.verdicts)

    def check(self, start: int, batch: int, images: np.ndarray, count: int, masks: np.ndarray | None = None) -> list[bool]:
        """Audit draws ``start..start+len(images)-1`` (their masks too, when given and the gate has
        training masks); return which of them are released.

        Raises :class:`ReleaseRefused` when the ``block`` policy's limit is passed."""
        image = self.images.audit(images)
        mask: CopyVerdicts | None = self.masks.audit(masks) if masks is not None and self.masks is not None else None
        for k in range(len(images)):
            v = Verdict(index=start + k, batch=batch, flagged=bool(image.flagged[k]), image_flagged=bool(image.flagged[k]),
                        distance=float(image.distance[k]), train_index=int(image.index[k]), transform=image.poses[k].describe())  # fmt: skip
            if mask is not None and mask.audited[k]:
                v.mask_flagged, v.mask_distance = bool(mask.flagged[k]), float(mask.distance[k])
                v.mask_train_index, v.mask_transform = int(mask.index[k]), mask.poses[k].describe()
                v.flagged = v.flagged or v.mask_flagged
            self.verdicts.append(v)
            self._scores.append(self._score(v)[0])
        kept = {}
        for v in self.worst():
            if v.index in self._worst:
                kept[v.index] = self._worst[v.index]
            elif v.index >= start:
                kept[v.index] = (images[v.index - start].copy(), None if masks is None else np.asarray(masks[v.index - start]).copy())
        self._worst = kept
        if self.options.policy is ReleasePolicy.block and self.n_flagged > self.options.max_flagged_fraction * count:
            raise ReleaseRefused(
                f"memorization gate (block): {self.n_flagged} of {len(self.verdicts)} draws so far are near-copies of training "
                f"images, above max_flagged_fraction={self.options.max_flagged_fraction:g} of {count}; the cohort is not released."
            )
        keep_flagged = self.options.policy is not ReleasePolicy.filter
        return [keep_flagged or not v.flagged for v in self.verdicts[len(self.verdicts) - len(images) :]]

    def sample_entry(self, index: int) -> dict[str, Any]:
        """What the manifest records of a released sample's audit."""
        v = self.verdicts[index]
        return {"flagged": v.flagged, "distance": v.distance, "mask_distance": v.mask_distance}

    def _score(self, v: Verdict) -> tuple[float, bool]:
        """A draw's closeness to the training set: its distance over the threshold, in whichever of
        image and mask is closer (and whether that is the mask)."""
        image = v.distance / max(self.images.threshold, 1e-12)
        if v.mask_distance is None or self.masks is None:
            return image, False
        mask = v.mask_distance / max(self.masks.threshold, 1e-12)
        return (mask, True) if mask < image else (image, False)

    def worst(self, k: int = WORST_PAIRS) -> list[Verdict]:
        """The ``k`` draws closest to a training image or mask (distance over the threshold), closest first."""
        return [self.verdicts[i] for i in np.argsort(self._scores, kind="stable")[:k]]

    def closest_pairs_png(self) -> bytes:
        """The worst draws, each beside the training image it matched (flipped as it matched) — or,
        where the draw's mask is the closer match, its mask beside the training mask: rows of
        (synthetic, training) pairs, two pairs per row."""
        from medsynth.metrics.report import grid_png

        tiles = []
        for v in self.worst():
            image, mask = self._worst[v.index]
            by_mask = self._score(v)[1] and mask is not None and self.train_masks is not None
            flip = FLIP_NAMES.index((v.mask_transform if by_mask else v.transform).split(",")[0])
            dims = ((), (2,), (1,), (1, 2))[flip]
            if by_mask:
                scale = max(1, int(self.train_masks.max()))
                train = self.train_masks[v.mask_train_index][None].astype(np.float32) / scale
                shown = np.asarray(mask, dtype=np.float32)[None] / scale
            else:  # (a blank draw matched nothing: beside an empty tile)
                train = self.train_images[v.train_index] if v.train_index >= 0 else np.zeros_like(image)
                shown = image
            tiles += [shown, np.flip(train, dims).copy() if dims else train]
        return grid_png(np.stack(tiles), columns=4)

    def summary(self, count: int) -> dict[str, Any]:
        """The manifest's ``release`` section (the figure's key is added by the writer)."""
        opts = self.options
        flagged = [v for v in self.verdicts if v.flagged]
        withheld = flagged if opts.policy is ReleasePolicy.filter else []
        audits = {"image": self.images.summary()} | ({"mask": self.masks.summary()} if self.masks is not None else {})
        return {
            "policy": opts.policy.value,
            "options": opts.model_dump(mode="json"),
            "draws": len(self.verdicts),
            "released": count,
            "flagged": len(flagged),
            "flagged_by_image": sum(v.image_flagged for v in self.verdicts),
            "flagged_by_mask": sum(v.mask_flagged for v in self.verdicts),
            "masks_audited": sum(v.mask_distance is not None for v in self.verdicts),
            **({"masks_not_audited": self.masks_not_audited} if self.masks is None else {}),
            "fraction_flagged": len(flagged) / len(self.verdicts) if self.verdicts else 0.0,
            "released_flagged": 0 if opts.policy is ReleasePolicy.filter else len(flagged),
            "withheld": [v.to_dict() for v in withheld],
            "thresholds": {name: a["threshold"] for name, a in audits.items()} | {"how": (
                f"{opts.threshold_ratio:g} x the {opts.threshold_quantile:g} quantile of the training images' (masks') own distances "
                "to other patients' training images (masks) under the same search")},
            "audits": audits,
            "rule": "a draw is flagged when its image or its mask is",
            "reference": {"train_images": self.images.n_reference, "blank_dropped": self.images.n_total - self.images.n_reference,
                          "train_masks": self.masks.n_reference if self.masks is not None else 0},
            "worst_pairs": [v.to_dict() | {"withheld": bool(withheld) and v.flagged} for v in self.worst()],
        }  # fmt: skip
