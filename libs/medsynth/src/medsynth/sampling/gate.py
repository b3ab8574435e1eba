"""The memorization gate: every cohort is audited against its generator's training images before
it is released, and a policy decides what happens to near-copies.

Audit (``medsynth.metrics.memorization``): each drawn sample's nearest training image, over the
training images' flips, in two spaces — the pixels, and low-pass features (the image averaged over
4 × 4 blocks) — against the training set's own nearest-neighbour distances in the same space; a
sample at most ``threshold_ratio`` × the ``threshold_quantile`` quantile of those distances from a
training image, in either space, is *flagged*. Constant (blank) training images are left out of the
reference: they carry no patient and would make every blank sample a "copy".

Why low-pass features: they average pixel noise away while keeping the layout, so a lightly noised
copy that the full-resolution test misses is still caught (on phantom slices, copies with noise of
σ = 0.02 are flagged at 4 × 4 but not at full resolution). A learned in-domain encoder (what the
evaluation's audit uses: the real-data segmenter's) is not there when a cohort is drawn; an
untrained random convolutional encoder was tried and caught no more than the pixels did.
Translations are not searched: a copy shifted by a pixel or more is not caught (measured: none of
the 1-pixel-shifted phantom copies are).

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
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from medsynth.core.errors import InvalidInput, PermanentJobError
from medsynth.metrics.memorization import FLIP_DIMS, PIXEL_SPACE, TRANSFORMS, AuditReference
from medsynth.v1 import jobs_pb2

LOWPASS_BLOCK = 4
LOWPASS_SPACE = f"low-pass: {LOWPASS_BLOCK}x{LOWPASS_BLOCK} block means, then as pixel space (zero-mean unit-L2, min over flips)"
WORST_PAIRS = 8


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
    threshold_ratio: float = Field(0.5, gt=0, le=10, description="Flag at <= ratio x quantile of the training set's own NN distances.")
    threshold_quantile: float = Field(0.01, ge=0, le=1, description="The quantile of the training set's NN distances the threshold is anchored to.")


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


def lowpass(images: np.ndarray) -> np.ndarray:
    """(N, 1, S, S) → (N, 1, S/b, S/b) block means, b = :data:`LOWPASS_BLOCK` (a partial edge block dropped)."""
    return F.avg_pool2d(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)), LOWPASS_BLOCK).numpy()


@dataclass
class Verdict:
    """One draw's audit: its nearest training image in each space and whether it is flagged."""

    index: int
    batch: int
    flagged: bool
    distance: float
    train_index: int
    transform: str
    lowpass_distance: float
    lowpass_train_index: int

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "batch": self.batch, "flagged": self.flagged, "distance": self.distance,
                "train_index": self.train_index, "transform": self.transform,
                "lowpass_distance": self.lowpass_distance, "lowpass_train_index": self.lowpass_train_index}  # fmt: skip


@dataclass
class ReleaseGate:
    """Audits a cohort's draws batch by batch against one reference, and applies the policy.

    Build it with :meth:`for_training_images`; the cohort writer calls :meth:`next_batch` for the
    next batch, :meth:`check` on each drawn batch, and :meth:`summary` for the manifest.
    """

    options: GateOptions
    reference: AuditReference  # pixel space
    lowpass_reference: AuditReference
    train_images: np.ndarray  # (M, 1, S, S): the reference images, for the closest-pairs figure
    n_blank_dropped: int = 0
    verdicts: list[Verdict] = field(default_factory=list)
    _worst_images: dict[int, np.ndarray] = field(default_factory=dict)  # draw index → image, the worst so far

    @classmethod
    def for_training_images(cls, train_images: np.ndarray, options: GateOptions) -> ReleaseGate:
        images = np.asarray(train_images, dtype=np.float32)
        if images.ndim == 3:
            images = images[:, None]
        if images.ndim != 4 or images.shape[1] != 1:
            raise InvalidInput(f"training images must be (N, 1, S, S), got shape {images.shape}.")
        varied = images.reshape(len(images), -1).std(axis=1) > 0
        kept = images[varied]
        if len(kept) < 2:
            raise InvalidInput(f"the memorization gate needs at least 2 non-blank training images, got {len(kept)}.")
        if min(kept.shape[2:]) < 2 * LOWPASS_BLOCK:
            raise InvalidInput(f"the memorization gate needs images of at least {2 * LOWPASS_BLOCK} pixels a side, got {kept.shape[2:]}.")
        rule = {"threshold_quantile": options.threshold_quantile, "threshold_ratio": options.threshold_ratio}
        return cls(options, AuditReference(kept, **rule), AuditReference(lowpass(kept), **rule), kept,
                   n_blank_dropped=int((~varied).sum()))  # fmt: skip

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

    def check(self, start: int, batch: int, images: np.ndarray, count: int) -> list[bool]:
        """Audit draws ``start..start+len(images)-1``; return which of them are released.

        Raises :class:`ReleaseRefused` when the ``block`` policy's limit is passed."""
        pixel, low = self.reference.audit(images), self.lowpass_reference.audit(lowpass(images))
        flagged = pixel.flagged | low.flagged
        for k in range(len(images)):
            self.verdicts.append(Verdict(
                index=start + k, batch=batch, flagged=bool(flagged[k]), distance=float(pixel.nn_distance[k]),
                train_index=int(pixel.nn_index[k]), transform=TRANSFORMS[int(pixel.nn_transform[k])],
                lowpass_distance=float(low.nn_distance[k]), lowpass_train_index=int(low.nn_index[k]),
            ))  # fmt: skip
        self._worst_images = {v.index: self._worst_images[v.index] if v.index < start else images[v.index - start].copy()
                              for v in self.worst()}  # fmt: skip
        if self.options.policy is ReleasePolicy.block and self.n_flagged > self.options.max_flagged_fraction * count:
            raise ReleaseRefused(
                f"memorization gate (block): {self.n_flagged} of {len(self.verdicts)} draws so far are near-copies of training "
                f"images, above max_flagged_fraction={self.options.max_flagged_fraction:g} of {count}; the cohort is not released."
            )
        keep_flagged = self.options.policy is not ReleasePolicy.filter
        return [keep_flagged or not f for f in flagged.tolist()]

    def sample_entry(self, index: int) -> dict[str, Any]:
        """What the manifest records of a released sample's audit."""
        v = self.verdicts[index]
        return {"flagged": v.flagged, "distance": v.distance, "lowpass_distance": v.lowpass_distance}

    def worst(self, k: int = WORST_PAIRS) -> list[Verdict]:
        """The ``k`` draws closest to a training image (distance over the threshold, in whichever
        space is closer), closest first."""
        t_pixel, t_low = max(self.reference.threshold, 1e-12), max(self.lowpass_reference.threshold, 1e-12)
        score = [min(v.distance / t_pixel, v.lowpass_distance / t_low) for v in self.verdicts]
        return [self.verdicts[i] for i in np.argsort(score, kind="stable")[:k]]

    def closest_pairs_png(self) -> bytes:
        """The worst draws, each beside its nearest training image (flipped as it matched): rows of
        (synthetic, training) pairs, two pairs per row."""
        from medsynth.metrics.report import grid_png

        tiles = []
        for v in self.worst():
            dims = FLIP_DIMS[TRANSFORMS.index(v.transform)]
            train = self.train_images[v.train_index]
            tiles += [self._worst_images[v.index], np.flip(train, dims).copy() if dims else train]
        return grid_png(np.stack(tiles), columns=4)

    def summary(self, count: int) -> dict[str, Any]:
        """The manifest's ``release`` section (the figure's key is added by the writer)."""
        ref, low, opts = self.reference, self.lowpass_reference, self.options
        how = (f"{opts.threshold_ratio:g} x the {opts.threshold_quantile:g} quantile of the {ref.n_train} training images' "
               "own nearest-neighbour distances (each against every other training image and its flips)")  # fmt: skip
        flagged = [v for v in self.verdicts if v.flagged]
        withheld = flagged if opts.policy is ReleasePolicy.filter else []
        return {
            "policy": opts.policy.value,
            "options": opts.model_dump(mode="json"),
            "draws": len(self.verdicts),
            "released": count,
            "flagged": len(flagged),
            "fraction_flagged": len(flagged) / len(self.verdicts) if self.verdicts else 0.0,
            "released_flagged": 0 if opts.policy is ReleasePolicy.filter else len(flagged),
            "withheld": [v.to_dict() for v in withheld],
            "thresholds": {"pixel": ref.threshold, "lowpass": low.threshold, "how": how + ", in the same space"},
            "spaces": {"pixel": PIXEL_SPACE, "lowpass": LOWPASS_SPACE},
            "rule": ref.rule + ", in either space",
            "reference": {"train_images": ref.n_train, "blank_dropped": self.n_blank_dropped,
                          "median_train_nn_distance": float(np.median(ref.train_nn_distance)),
                          "median_train_lowpass_nn_distance": float(np.median(low.train_nn_distance))},
            "worst_pairs": [v.to_dict() | {"withheld": bool(withheld) and v.flagged} for v in self.worst()],
        }  # fmt: skip
