"""Copies in disguise: is an image (or a mask) a training image moved, flipped, turned, rescaled,
cropped, re-toned or noised? Each query is searched against every reference image under the
transformations a copy survives.

What is searched (the *pose* of a match): the four flips (identity, left-right, upside-down, both),
rotations of up to ±10° and scalings of 0.9–1.1 about the image centre (on a lattice of 1.67° and
0.033 steps: a copy between lattice points is at most 0.83° and 0.017 from one), shifts of up to ±4
pixels (and half-pixel offsets); a crop resized back is a scaling plus a shift. Intensity changes
are taken out beforehand.

1. **Preparation** (:func:`prepare_images`, :func:`prepare_masks`). An image becomes its per-image
   ranks (each pixel's rank among the image's pixels, ties sharing their mean rank, scaled to
   [0, 1]): a monotone intensity change — gamma, contrast, brightness, windowing — leaves the ranks
   as they were. A Gaussian blur (σ = 1 px) then takes pixel noise out. A mask becomes its label
   values scaled to [0, 1], blurred alike, at half resolution (masks are smooth; it is 4× cheaper).
2. **Candidates.** Each query is drawn at half resolution in 18 versions (flipped left-right or
   not × rotated by −6.7°, 0°, 6.7° × scaled by 0.933, 1, 1.067); each version's descriptor is the
   magnitude of its low spatial frequencies (|k| ≤ 6, Hann-windowed, square-rooted, unit length),
   which a shift leaves nearly unchanged and which is the same for an image turned by 180°. The
   :data:`CANDIDATES` reference images with the highest cosine similarity to any version (one matrix
   product against the reference's descriptors) go on.
3. **Coarse poses** (half resolution). Each candidate against the query under each of the 4 flips ×
   15 coarse poses (rotation −6.7°, 0°, 6.7° × scaling 0.9, 0.933, 1, 1.067, 1.1) from each of the
   query's 4 half-pixel phases, every shift: the normalised cross-correlation (Pearson's ``r`` of
   the prepared images over the compared window). The :data:`FINALISTS` best candidates, and the
   descriptors' best, go on with their best coarse pose.
4. **Fine poses** (full resolution). Around each finalist's coarse pose, a 3 × 3 grid spanning its
   neighbourhood, then the lattice points around the best of it; each pose's central (S − 8)² crop
   against every window of the finalist shifted by up to ±4 px. The winner is also tried at
   half-pixel offsets.
5. **Score.** The best ``r`` is the query's *similarity* (computed in float64: an exact copy gives
   exactly 1); for images also the rank (Spearman) correlation of the two blurred raw images over
   the compared region alone, whichever is higher (a shift or crop changes what lies outside that
   region, and so the global ranks). The *distance* is ``sqrt(2 − 2 r)`` (0: a copy up to the
   searched transformations; the scale of :mod:`medsynth.metrics.memorization`).

:class:`CopyAudit` calibrates a reference on itself: the same search for (up to
``calibration_size`` of) its own images, each against the images of *other* patients only — how
close a real image of another patient gets under the search, which a copy must beat — and flags a
query closer than ``threshold_ratio`` × the ``threshold_quantile`` quantile of those distances.

Measured (``make bench-gate``, ``bench-results/hippocampus-gate/``: hippocampus 64², 4,647 training
slices): 200 of 200 planted copies flagged under every disguise above, none of the 955 real slices
of held-out patients by their image (2 by their mask); about 5 ms per sample, image and mask, on 2
CPU cores. On phantom slices every disguise is caught at 64² (the unit tests); at 32² shifts of
4 px and crops are missed more often (the compared crop is then small); smaller images are enlarged
to 32² first. Not searched: larger rotations, scalings or shifts, shears and elastic deformations,
crops keeping less than about 90% of the side. Masks under rotation or rescaling are often missed
(about a third caught): a small blob resampled nearest-neighbour changes as much as another
patient's blob differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.core.errors import InvalidInput

BLUR_SIGMA = 1.0
MAX_SHIFT = 4
ANGLE_STEP = 10.0 / 6  # degrees: the lattice is -6..6 steps (±10°)
ANGLE_STEPS = 6
SCALE_STEP = 0.1 / 3  # the lattice is 1 + (-3..3) steps (0.9-1.1)
SCALE_STEPS = 3
COARSE_ANGLES = (-4, 0, 4)  # in lattice steps
COARSE_SCALES = (-3, -2, 0, 2, 3)
ROUND_ONE_ANGLES = (-3, 0, 3)  # the first fine round around a coarse pose (overlapping its neighbours'),
ROUND_ONE_SCALES = (-2, 0, 2)  # then the lattice points around the best of it, then its half-pixel offsets
FINE_OFFSETS = ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5))  # px: with the whole-pixel shifts, every half pixel
FREQ_MAX = 6
CANDIDATES = 6
FINALISTS = 1
PHASES = ((0, 0), (1, 0), (0, 1), (1, 1))  # the query's half-pixel phases at half resolution
COARSE_SIZE = 32  # candidates and coarse poses are found at half resolution when that leaves this many pixels a side
MIN_SIZE = 2 * FREQ_MAX + 2 * MAX_SHIFT + 2  # smallest image side searched
SMALL_TO = 32  # the audit enlarges smaller images to this side first (its shifts are then that much finer)
FLIP_NAMES = ("identity", "hflip", "vflip", "hvflip")
SEARCH = (f"flips x rotations ±{ANGLE_STEPS * ANGLE_STEP:g}° (step {ANGLE_STEP:.2f}°) x scalings "
          f"{1 - SCALE_STEPS * SCALE_STEP:g}-{1 + SCALE_STEPS * SCALE_STEP:g} (step {SCALE_STEP:.3f}) x shifts ±{MAX_SHIFT} px "
          f"(and half-pixel offsets): normalised cross-correlation of the central crop; {CANDIDATES} candidates per query "
          "by low-frequency Fourier magnitudes, coarse poses at half resolution, fine poses at full resolution")  # fmt: skip
IMAGE_PREPARATION = (f"per-image ranks (invariant to gamma, contrast, brightness), Gaussian blur σ={BLUR_SIGMA:g} px; the best "
                     "match also scored by rank correlation over the compared region")  # fmt: skip
MASK_PREPARATION = f"label values scaled to [0, 1], Gaussian blur σ={BLUR_SIGMA:g} px, half resolution"
CHUNK = 32  # queries per block
MIN_MASK_FRACTION = 0.01  # masks with fewer labelled pixels (of the image's) are not audited


@dataclass(frozen=True)
class Pose:
    """How a query was matched: ``flip`` of :data:`FLIP_NAMES` applied to the query, then rotated by
    ``angle`` degrees and magnified by ``scale`` about its centre, then compared with the training
    image shifted by ``(dx, dy)`` pixels."""

    flip: int
    angle: float
    scale: float
    dx: int
    dy: int
    offset: tuple[float, float] = (0.0, 0.0)  # sub-pixel: the query is sampled this far (x, y) off the lattice pose

    def describe(self) -> str:
        if (self.angle, self.scale, self.dx, self.dy, self.offset) == (0.0, 1.0, 0, 0, (0.0, 0.0)):
            return FLIP_NAMES[self.flip]
        return (f"{FLIP_NAMES[self.flip]}, rotate {self.angle:+.1f}°, scale {self.scale:.3f}, "
                f"shift ({self.dx - self.offset[0]:+g}, {self.dy - self.offset[1]:+g}) px")  # fmt: skip

    @property
    def lattice(self) -> int:
        return _lattice(round(self.angle / ANGLE_STEP), round((self.scale - 1) / SCALE_STEP))


@dataclass(frozen=True)
class Matches:
    """Each query's best match: reference index, similarity ``r`` and distance ``sqrt(2 - 2r)``, pose."""

    index: np.ndarray  # (N,) int; -1 where nothing could be compared (a blank query)
    similarity: np.ndarray  # (N,) float
    distance: np.ndarray  # (N,) float
    poses: list[Pose]


# --- preparation ------------------------------------------------------------------------------------


def _as_stack(x: Any, name: str, min_size: int = MIN_SIZE) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3 or a.shape[0] == 0:
        raise InvalidInput(f"{name} must be a non-empty (N, 1, H, W) or (N, H, W) array, got shape {a.shape}.")
    if a.shape[1] != a.shape[2] or a.shape[1] < min_size:
        raise InvalidInput(f"{name} must be square images of at least {min_size} pixels a side, got {a.shape[1:]}.")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or not np.isfinite(a).all():
        raise InvalidInput(f"{name} must be finite numbers, got dtype {a.dtype}.")
    return a


def prepare_images(images: Any, name: str = "images") -> torch.Tensor:
    """(N, 1, S, S) or (N, S, S) → (N, 1, S, S) float32: per-image ranks in [0, 1], blurred."""
    x = torch.from_numpy(np.ascontiguousarray(_as_stack(images, name), dtype=np.float32))
    n, s = x.shape[0], x.shape[-1]
    ranks = torch.cat([_ranks(x[i : i + 1024].reshape(-1, s * s)) for i in range(0, n, 1024)])
    return _blur(ranks.reshape(n, 1, s, s))


def _ranks(flat: torch.Tensor) -> torch.Tensor:
    """Each row's values → their ranks scaled to [0, 1], ties sharing the mean of their ranks."""
    length = flat.shape[1]
    ordered, order = flat.sort(dim=1)
    position = torch.arange(length).expand_as(order)
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]  # a new value starts here
    last = torch.ones_like(first)
    last[:, :-1] = first[:, 1:]
    start = torch.where(first, position, 0).cummax(dim=1).values
    end = torch.where(last, position, length - 1).flip(1).cummin(dim=1).values.flip(1)
    return torch.empty(flat.shape).scatter_(1, order, (start + end).float() / (2.0 * (length - 1)))


def prepare_masks(masks: Any, max_label: int, name: str = "masks") -> torch.Tensor:
    """(N, S, S) label maps → (N, 1, S, S) float32: labels / ``max_label``, blurred."""
    m = _as_stack(masks, name)
    if max_label < 1:
        raise InvalidInput(f"max_label must be at least 1, got {max_label}.")
    x = torch.from_numpy(np.ascontiguousarray(np.clip(m, 0, max_label), dtype=np.float32) / float(max_label))
    return _blur(x[:, None])


def _blur(x: torch.Tensor, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """A Gaussian blur of (N, 1, S, S) images (radius 3σ, the border replicated)."""
    from scipy.ndimage import gaussian_filter  # several times faster than torch's convolutions on small images

    blurred = gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=3.0)
    return torch.from_numpy(np.ascontiguousarray(blurred, dtype=np.float32))


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Rows centred and scaled to unit L2 norm (constant rows → zeros)."""
    x = x - x.mean(dim=1, keepdim=True)
    norm = x.norm(dim=1, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))


# --- geometry ---------------------------------------------------------------------------------------


def _angle(step: int) -> float:
    return step * ANGLE_STEP


def _scale(step: int) -> float:
    return 1.0 + step * SCALE_STEP


def _flip(x: torch.Tensor, flip: int) -> torch.Tensor:
    dims = ((), (-1,), (-2,), (-2, -1))[flip]
    return torch.flip(x, dims) if dims else x


_WINDOWS: dict[int, torch.Tensor] = {}


def _descriptor(x: torch.Tensor, window: bool = True) -> torch.Tensor:
    """(B, 1, S, S) → (B, D) unit rows: square roots of the low-frequency Fourier magnitudes of the
    centred image (shift-tolerant; the same for an image and its 180° rotation). ``window``: Hann-
    windowed first (for images, which fill the frame; a mask on a background is not, so that a
    shift towards the border changes nothing)."""
    size = x.shape[-1]
    if size not in _WINDOWS:
        w = torch.hann_window(size, periodic=False, dtype=torch.float32)
        _WINDOWS[size] = w[:, None] * w[None, :]
    y = x[:, 0] - x[:, 0].mean(dim=(1, 2), keepdim=True) if window else x[:, 0]
    spectrum = torch.fft.rfft2(y * _WINDOWS[size] if window else y).abs()
    rows = torch.cat([torch.arange(0, FREQ_MAX + 1), torch.arange(size - FREQ_MAX, size)])
    low = spectrum[:, rows][:, :, : FREQ_MAX + 1].reshape(len(x), -1).sqrt()
    norm = low.norm(dim=1, keepdim=True)
    return low / torch.where(norm > 0, norm, torch.ones_like(norm))


COARSE_POSES = [(a, t) for a in COARSE_ANGLES for t in COARSE_SCALES]  # (angle step, scale step)
VERSION_POSES = [(a, t) for a in COARSE_ANGLES for t in (-2, 0, 2)]  # the candidates' versions (with and without hflip)
_GRIDS: dict[tuple[int, int], torch.Tensor] = {}


def _lattice_grids(size: int, out: int) -> torch.Tensor:
    """Sampling grids of every (angle, scale) lattice point, (13 · 7, out, out, 2), cached."""
    if (size, out) not in _GRIDS:
        steps = [(a, t) for a in range(-ANGLE_STEPS, ANGLE_STEPS + 1) for t in range(-SCALE_STEPS, SCALE_STEPS + 1)]
        angles = torch.tensor([_angle(a) for a, _ in steps], dtype=torch.float64)
        scales = torch.tensor([_scale(t) for _, t in steps], dtype=torch.float64)
        _GRIDS[(size, out)] = _grid(angles, scales, size, out).float()
    return _GRIDS[(size, out)]


def _lattice(angle_step: int, scale_step: int) -> int:
    return (angle_step + ANGLE_STEPS) * (2 * SCALE_STEPS + 1) + scale_step + SCALE_STEPS


def _grid(angles: torch.Tensor, scales: torch.Tensor, size: int, out: int) -> torch.Tensor:
    a = torch.deg2rad(angles)
    ratio = out / size  # the output pixels span this fraction of the input's [-1, 1]
    cos, sin = torch.cos(a) / scales * ratio, torch.sin(a) / scales * ratio
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], -2)
    return F.affine_grid(theta, [len(theta), 1, out, out], align_corners=False)


def _window_sums(x: torch.Tensor, c: int) -> torch.Tensor:
    """Sums of every c × c window of each (M, S, S) image, by an integral image: (M, S-c+1, S-c+1)."""
    integral = F.pad(x.cumsum(1).cumsum(2), (1, 0, 1, 0))
    return integral[:, c:, c:] - integral[:, :-c, c:] - integral[:, c:, :-c] + integral[:, :-c, :-c]


def _sample(images: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(images, grids, mode="bilinear", padding_mode="border", align_corners=False)


# --- the search -------------------------------------------------------------------------------------


class CopySearch:
    """Prepared reference images (M, 1, S, S), searched by :meth:`search`.

    Args:
        reference: prepared images (from :func:`prepare_images` or :func:`prepare_masks`).
        groups: optional group (patient) of each reference image, for :meth:`search`'s ``exclude``.
        raw: for images, the reference images as they were (M, 1, S, S) or (M, S, S): the winning
            pair is then also scored by rank correlation over the compared region alone (see
            :meth:`search`); None (masks): by the prepared images' correlation.
    """

    def __init__(self, reference: torch.Tensor, groups: np.ndarray | None = None, raw: np.ndarray | None = None,
                 candidates: int = CANDIDATES) -> None:  # fmt: skip
        if reference.ndim != 4 or reference.shape[1] != 1 or reference.shape[0] < 1 or reference.shape[-1] < MIN_SIZE:
            raise InvalidInput(f"the reference must be prepared (M, 1, S, S) images, S >= {MIN_SIZE}, got shape {tuple(reference.shape)}.")
        self.size = int(reference.shape[-1])
        self.crop = self.size - 2 * MAX_SHIFT
        self.candidates = int(candidates)
        self.reference = reference.float().contiguous()
        self.groups = None if groups is None else np.asarray(groups)
        if self.groups is not None and self.groups.shape != (len(reference),):
            raise InvalidInput(f"groups must name the group of each of the {len(reference)} reference images, got shape {self.groups.shape}.")
        self.raw = None if raw is None else _as_stack(raw, "raw reference images")
        if self.raw is not None and self.raw.shape != tuple(reference.shape[:1] + reference.shape[2:]):
            raise InvalidInput(f"raw reference images must match the prepared ones, got shape {self.raw.shape}.")
        self.window_norm = _window_norms(self.reference[:, 0], self.crop)  # (M, 2s+1, 2s+1)
        # the candidates' and the coarse pose search's resolution: half, for images of at least 64 px
        self.factor = 2 if self.size >= 2 * COARSE_SIZE else 1
        self.half = self._coarse(self.reference)
        self.window = raw is not None  # images (with raw references) are windowed, masks are not
        self.descriptors = torch.cat([_descriptor(self.half[i : i + 1024], self.window) for i in range(0, len(reference), 1024)])
        self.half_crop = self.half.shape[-1] - 2 * (MAX_SHIFT // self.factor)
        self.half_norm = _window_norms(self.half[:, 0], self.half_crop)
        coarse = [_lattice(a, t) for a, t in COARSE_POSES]
        self._version_grids = _lattice_grids(self.half.shape[-1], self.half.shape[-1])[[_lattice(a, t) for a, t in VERSION_POSES]]
        self._coarse_grids = _lattice_grids(self.half.shape[-1], self.half_crop)[coarse]  # (V, h, h, 2)
        self._fine_grids = _lattice_grids(self.size, self.crop)

    def __len__(self) -> int:
        return int(self.reference.shape[0])

    def _coarse(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.factor) if self.factor > 1 else x

    def search(self, queries: torch.Tensor, exclude: np.ndarray | None = None, raw: np.ndarray | None = None) -> Matches:
        """The best match of each prepared query (N, 1, S, S). ``exclude``: per query, a group whose
        reference images it must not match (its own patient, when the reference audits itself).
        ``raw``: the queries as they were, when the reference has raw images: the winning pair's
        similarity is then the larger of its prepared images' correlation and the rank (Spearman)
        correlation of the two blurred raw images over the compared region alone — which a shift
        or crop, changing what lies outside that region, does not disturb."""
        if queries.ndim != 4 or queries.shape[1:] != self.reference.shape[1:]:
            raise InvalidInput(f"queries must be prepared images of shape (N, 1, {self.size}, {self.size}), "
                               f"got {tuple(queries.shape)}.")  # fmt: skip
        if exclude is not None and (self.groups is None or len(exclude) != len(queries)):
            raise InvalidInput("exclude needs a reference built with groups, and one group per query.")
        if (raw is None) != (self.raw is None):
            raise InvalidInput("give the raw queries exactly when the reference has raw images.")
        raw_q = None if raw is None else _as_stack(raw, "raw queries")
        index, sim, poses = [], [], []
        for start in range(0, len(queries), CHUNK):
            stop = start + CHUNK
            i, r, p = self._search(queries[start:stop].float().contiguous(), None if exclude is None else np.asarray(exclude)[start:stop],
                                   None if raw_q is None else raw_q[start:stop])  # fmt: skip
            index.append(i), sim.append(r), poses.extend(p)
        similarity = np.concatenate(sim)
        distance = np.sqrt(np.clip(2.0 - 2.0 * similarity, 0.0, None))
        return Matches(np.concatenate(index), similarity, distance, poses)

    def _candidates(self, q: torch.Tensor, exclude: np.ndarray | None) -> torch.Tensor:
        """Each query's top candidates (n, K) by the descriptors of its 18 versions."""
        n, v = len(q), len(VERSION_POSES)
        half = self._coarse(q)
        both = torch.cat([half, torch.flip(half, (-1,))])  # unflipped, flipped left-right
        versions = _sample(both.repeat(v, 1, 1, 1), self._version_grids.repeat_interleave(2 * n, dim=0))
        desc = _descriptor(versions, self.window).view(2 * v, n, -1).transpose(0, 1)  # (n, 2V, D)
        best = torch.matmul(desc, self.descriptors.T).amax(dim=1)  # over versions: (n, M)
        if exclude is not None:
            best = best.masked_fill(torch.from_numpy(self.groups[None, :] == exclude[:, None]), -math.inf)
        return best.topk(min(self.candidates, len(self)), dim=1).indices

    def _coarse_posed(self, half_q: torch.Tensor) -> torch.Tensor:
        """Half-resolution queries (n, 1, S/f, S/f) at every coarse pose and flip, unit crops: (n, 4·V, 1, h, h),
        flips in the order identity, hflip, hvflip, vflip (see ``flip_of``)."""
        n, v, h = len(half_q), len(COARSE_POSES), self.half_crop
        both = torch.cat([half_q, torch.flip(half_q, (-1,))])
        posed = _sample(both.repeat(v, 1, 1, 1), self._coarse_grids.repeat_interleave(2 * n, dim=0))  # (V·2n, 1, h, h)
        posed = _unit(posed.reshape(len(posed), -1)).view(v, 2, n, h, h).permute(2, 1, 0, 3, 4)  # (n, flip, V, h, h)
        return torch.cat([posed, posed.flip((-2, -1))], dim=1).reshape(n, 4 * v, 1, h, h)

    def _search(self, q: torch.Tensor, exclude: np.ndarray | None, raw: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, list[Pose]]:
        n, c, s, v = len(q), self.crop, MAX_SHIFT, len(COARSE_POSES)
        top = self._candidates(q, exclude)
        k = top.shape[1]
        # coarse poses at half resolution: 2 flips × the coarse (angle, scale) poses, each also turned by
        # 180° (the other 2 flips), from each of the query's half-pixel phases (a shift by an odd number
        # of pixels is half a pixel off at half resolution)
        phases = PHASES if self.factor == 2 else [(0, 0)]
        shifted = [self._coarse(F.pad(q, (0, x, 0, y), mode="replicate")[..., y:, x:]) for x, y in phases]
        weights = torch.cat([self._coarse_posed(half) for half in shifted], dim=1)  # (n, P·4·V, 1, h, h)
        valid = torch.ones((n, k), dtype=torch.bool) if exclude is None else torch.from_numpy(self.groups[top.numpy()] != exclude[:, None])
        coarse_r = torch.empty((n, k, weights.shape[1]))
        for i in range(n):
            ncc = F.conv2d(self.half[top[i]], weights[i]) / self.half_norm[top[i]][:, None].clamp_min(1e-12)
            coarse_r[i] = ncc.amax(dim=(-2, -1))
        best_coarse, best_pose = coarse_r.max(dim=2)  # per candidate
        best_pose = best_pose % (4 * v)  # the phase does not matter any more
        best_coarse = best_coarse.masked_fill(~valid, -math.inf)
        # the finalists: the best by the coarse correlation, and the descriptors' best (the candidates come in its order)
        finalists = torch.cat([best_coarse.topk(min(FINALISTS, k), dim=1).indices, torch.zeros((n, 1), dtype=torch.long)], dim=1)
        # fine poses at full resolution around each finalist's coarse pose, every shift of ±s, in two
        # rounds: a 3 × 3 grid spanning the coarse pose's neighbourhood, then the lattice around its
        # best; the finalists of a query that share a coarse pose share the warps
        flip_of = (0, 1, 3, 2)
        blocks: dict[tuple[int, int, int, int], list[int]] = {}  # (query, flip, angle, scale step) → reference indices
        for i in range(n):
            for j in dict.fromkeys(finalists[i].tolist()):
                if bool(valid[i, j]):
                    p = int(best_pose[i, j])
                    blocks.setdefault((i, flip_of[p // v], *COARSE_POSES[p % v]), []).append(int(top[i, j]))
        index, similarity, poses = np.full(n, -1, dtype=np.int64), np.zeros(n), [Pose(0, 0.0, 1.0, 0, 0)] * n
        if not blocks:
            return index, similarity, poses
        flipped = torch.cat([_flip(q, f) for f in range(4)])  # (4n, 1, S, S)
        first = {key: [(a, t, (0.0, 0.0)) for a, t in _around(key[2], key[3], ROUND_ONE_ANGLES, ROUND_ONE_SCALES)] for key in blocks}
        found = self._fine_round(flipped, n, blocks, first)
        second = {key: [(a, t, (0.0, 0.0)) for a, t in _around(*found[key][1][:2], (-1, 0, 1), (-1, 0, 1))
                        if (a, t, (0.0, 0.0)) not in first[key]] for key in blocks}  # fmt: skip
        for key, result in self._fine_round(flipped, n, blocks, second).items():
            if result[0] > found[key][0]:
                found[key] = result
        winners: dict[int, tuple] = {}  # per query, its best block
        for key, result in found.items():
            if key[0] not in winners or result[0] > found[winners[key[0]]][0]:
                winners[key[0]] = key
        third = {key: [(*found[key][1][:2], o) for o in FINE_OFFSETS[1:]] for key in winners.values()}  # half-pixel offsets of the best
        for key, result in self._fine_round(flipped, n, {key: blocks[key] for key in third}, third).items():
            if result[0] > found[key][0]:
                found[key] = result
        best = np.full(n, -math.inf)
        for key, (r, (a, t, o), ref, dx, dy, _) in found.items():
            i = key[0]
            if r > best[i]:
                best[i], index[i] = r, ref
                poses[i] = Pose(key[1], round(_angle(a), 2), round(_scale(t), 4), dx, dy, o)
        blank = (q.reshape(n, -1).std(dim=1) == 0).numpy()  # a constant query: nothing to compare
        index[blank] = -1
        found_q = [i for i in range(n) if index[i] >= 0]
        if found_q:
            similarity[found_q], refined = self._subpixel(flipped, n, found_q, index[found_q], [poses[i] for i in found_q])
            for i, pose in zip(found_q, refined):
                poses[i] = pose
        if raw is not None and found_q:
            blurred = _blur(torch.from_numpy(np.ascontiguousarray(raw[found_q], dtype=np.float32))[:, None])
            sources = torch.stack([_flip(blurred, f) for f in range(4)])
            spearman = self._rank_correlation(sources, index[found_q], [poses[i] for i in found_q])
            similarity[found_q] = np.maximum(similarity[found_q], spearman)
        return index, similarity, [p if i >= 0 else Pose(0, 0.0, 1.0, 0, 0) for p, i in zip(poses, index)]

    def _fine_round(self, flipped: torch.Tensor, n: int, blocks: dict[tuple[int, int, int, int], list[int]],
                    steps: dict[tuple[int, int, int, int], list[tuple[int, int]]]) -> dict[tuple, tuple]:  # fmt: skip
        """Each block's best (r, (angle step, scale step, offset), reference, dx, dy, posed crop) over its
        ``steps`` (every shift)."""
        c, s = self.crop, MAX_SHIFT
        keys = [key for key in blocks if steps[key]]
        if not keys:
            return {}
        sizes = [len(steps[key]) for key in keys]
        sources = flipped[[key[1] * n + key[0] for key in keys]].repeat_interleave(torch.tensor(sizes), dim=0)
        grids = self._fine_grids[[_lattice(a, t) for key in keys for a, t, _ in steps[key]]]
        offsets = torch.tensor([o for key in keys for _, _, o in steps[key]], dtype=torch.float32) * (2.0 / self.size)
        grids = grids + offsets[:, None, None, :]
        posed = _unit(_sample(sources, grids).reshape(len(sources), -1)).view(len(sources), 1, c, c)
        width, out, start = 2 * s + 1, {}, 0
        for key, size in zip(keys, sizes):
            refs, weights = blocks[key], posed[start : start + size]
            start += size
            ncc = F.conv2d(self.reference[refs], weights) / self.window_norm[refs][:, None].clamp_min(1e-12)
            r, where = ncc.reshape(-1).max(dim=0)
            k, rest = divmod(int(where), size * width * width)
            col, cell = divmod(rest, width * width)
            dy, dx = divmod(cell, width)
            out[key] = (float(r), steps[key][col], refs[k], dx - s, dy - s, weights[col, 0])
        return out

    def _window(self, image: torch.Tensor, pose: Pose) -> torch.Tensor:
        """The reference image's window that a query's central crop is compared with at ``pose``."""
        c, s = self.crop, MAX_SHIFT
        return image[..., s + pose.dy : s + pose.dy + c, s + pose.dx : s + pose.dx + c]

    def _posed(self, sources: torch.Tensor, poses: list[Pose], owners: list[int]) -> torch.Tensor:
        """Query ``owners[j]`` at ``poses[j]``, central crop, for each j: (J, c²). ``sources``: the
        queries under each flip, (4, k, 1, S, S)."""
        c, s = self.crop, MAX_SHIFT
        out = torch.empty((len(poses), c * c))
        plain = [j for j, p in enumerate(poses) if p.lattice == _lattice(0, 0) and p.offset == (0.0, 0.0)]
        moved = [j for j in range(len(poses)) if j not in set(plain)]
        if plain:  # the identity pose: the crop itself, exactly
            out[plain] = torch.stack([sources[poses[j].flip, owners[j], 0, s : s + c, s : s + c] for j in plain]).reshape(len(plain), -1)
        if moved:
            images = torch.stack([sources[poses[j].flip, owners[j]] for j in moved])
            offsets = torch.tensor([poses[j].offset for j in moved], dtype=torch.float32) * (2.0 / self.size)
            grids = self._fine_grids[[poses[j].lattice for j in moved]] + offsets[:, None, None, :]
            out[moved] = _sample(images, grids).reshape(len(moved), -1)
        return out

    def _subpixel(self, flipped: torch.Tensor, n: int, queries: list[int], refs: np.ndarray, poses: list[Pose]) -> tuple[np.ndarray, list[Pose]]:
        """Each winning pair's correlation (float64: an exact copy gives exactly 1) at its pose or at a
        half-pixel offset of the query from it, whichever is higher, and that pose."""
        offsets = [(0.0, 0.0), (-0.5, 0.0), (0.0, -0.5), (-0.5, -0.5)]
        tried = [Pose(p.flip, p.angle, p.scale, p.dx, p.dy, (p.offset[0] + o[0], p.offset[1] + o[1])) for p in poses for o in offsets]
        sources = flipped.view(4, n, 1, self.size, self.size)[:, queries]
        posed = _unit(self._posed(sources, tried, [k for k in range(len(poses)) for _ in offsets]).double())
        windows = _unit(torch.stack([self._window(self.reference[r, 0], p).reshape(-1) for r, p in zip(refs, poses)]).double())
        r = _correlation(posed.view(len(poses), len(offsets), -1), windows[:, None])
        best, which = r.max(dim=1)
        return best.clamp(-1.0, 1.0).numpy(), [tried[k * len(offsets) + int(w)] for k, w in enumerate(which)]

    def _rank_correlation(self, sources: torch.Tensor, refs: np.ndarray, poses: list[Pose]) -> np.ndarray:
        """Spearman's correlation of each posed query and its reference window, both blurred raw
        images, ranked within the compared region only. ``sources``: the blurred raw queries under
        each flip, (4, k, 1, S, S)."""
        posed = self._posed(sources, poses, list(range(len(poses))))
        refs_blurred = _blur(torch.from_numpy(np.ascontiguousarray(self.raw[refs], dtype=np.float32))[:, None])
        windows = torch.stack([self._window(x[0], p).reshape(-1) for x, p in zip(refs_blurred, poses)])
        ranks = _ranks(torch.cat([posed, windows])).double()
        return _correlation(_unit(ranks[: len(poses)]), _unit(ranks[len(poses) :])).clamp(-1.0, 1.0).numpy()


def _correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The correlation of unit rows, as ``1 - |a - b|² / 2``: exactly 1 for identical rows (the dot
    product rounds to a hair below)."""
    return 1.0 - ((a - b) ** 2).sum(dim=-1) / 2.0


def _flip_array(x: np.ndarray, flip: int) -> np.ndarray:
    return x[::-1, ::-1] if flip == 3 else x[::-1] if flip == 2 else x[:, ::-1] if flip == 1 else x


def _box_key(mask: np.ndarray) -> tuple[bytes, tuple[int, int]]:
    """A label map's labelled box (its shape and labels, as bytes) and the box's top-left corner."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return b"", (0, 0)
    box = np.ascontiguousarray(mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], dtype=np.uint8)
    return np.array(box.shape, dtype=np.int32).tobytes() + box.tobytes(), (int(ys.min()), int(xs.min()))


def _around(angle: int, scale: int, angles: tuple[int, ...], scales: tuple[int, ...]) -> list[tuple[int, int]]:
    """The lattice points at the given offsets from ``(angle, scale)``, clipped to the lattice, each once."""
    points = [(min(ANGLE_STEPS, max(-ANGLE_STEPS, angle + da)), min(SCALE_STEPS, max(-SCALE_STEPS, scale + ds)))
              for da in angles for ds in scales]  # fmt: skip
    return list(dict.fromkeys(points))


def _window_norms(x: torch.Tensor, c: int) -> torch.Tensor:
    """Each (M, S, S) image's c × c windows' norms about their own means (float64 sums: the float32
    difference of squares loses digits): (M, S-c+1, S-c+1) float32."""
    x = x.double()
    total, squares = _window_sums(x, c), _window_sums(x * x, c)
    return (squares - total * total / (c * c)).clamp_min(0.0).sqrt().float()


# --- the calibrated audit ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CopyVerdicts:
    """One audited batch: per query, its best match's reference ``index`` (into the images the audit
    was built from; -1 where nothing was compared), ``distance`` (NaN where the query was not
    audited), ``poses``, whether it was ``audited`` and whether it is ``flagged``."""

    index: np.ndarray
    distance: np.ndarray
    poses: list[Pose]
    audited: np.ndarray
    flagged: np.ndarray


def check_threshold(threshold_ratio: float, threshold_quantile: float) -> None:
    """Both parts of the threshold lie strictly between 0 and 1 (:class:`InvalidInput` names the one that does not)."""
    for name, value in (("threshold_ratio", threshold_ratio), ("threshold_quantile", threshold_quantile)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
            raise InvalidInput(f"{name} must lie strictly between 0 and 1, got {value!r}.")


class CopyAudit:
    """A reference that flags copies in disguise, calibrated on itself.

    Build it with :meth:`of_images` or :meth:`of_masks`. Its calibration searches (up to
    ``calibration_size``, a seeded random subset of) its own images, each against the images of the
    *other* patients only; a query is flagged when its distance is at most
    ``threshold = threshold_ratio × quantile(calibration distances, threshold_quantile)``: closer
    to a training image than all but a small fraction of real images of other patients get, by a
    margin (``threshold_ratio`` < 1).
    """

    def __init__(self, kind: str, images: np.ndarray, kept: np.ndarray, patients: np.ndarray | None, *, threshold_ratio: float,
                 threshold_quantile: float, calibration_size: int, seed: int, min_pixels: int = 0, max_label: int = 1) -> None:  # fmt: skip
        check_threshold(threshold_ratio, threshold_quantile)
        if isinstance(calibration_size, bool) or not isinstance(calibration_size, int) or calibration_size < 1:
            raise InvalidInput(f"calibration_size must be a positive integer, got {calibration_size!r}.")
        self.kind, self.threshold_ratio, self.threshold_quantile = kind, float(threshold_ratio), float(threshold_quantile)
        self.min_pixels, self.max_label = int(min_pixels), int(max_label)
        self.n_total, self.side = int(len(images)), int(images.shape[-1])
        self.kept_index = np.flatnonzero(kept)
        if len(self.kept_index) < 2:
            what = "non-blank training images" if kind == "image" else "training masks with foreground"
            raise InvalidInput(f"the copy audit needs at least 2 {what}, got {len(self.kept_index)}.")
        reference = images[self.kept_index]
        if patients is None:
            groups, self.groups_how = np.arange(len(reference)), "no patient ids: each training image stands for its own patient"
        else:
            patients = np.asarray(patients)
            if patients.shape != (self.n_total,):
                raise InvalidInput(f"patients must give the patient of each of the {self.n_total} training images, got shape {patients.shape}.")
            groups, self.groups_how = patients[self.kept_index], "each against the training images of other patients"
        if len(np.unique(groups)) < 2:  # one patient: there is no other to calibrate against; each image stands for its own
            groups, self.groups_how = np.arange(len(reference)), "one patient only: each training image stands for its own patient"
        self.groups = groups
        self.search = CopySearch(self._prepare(reference), groups, raw=self._resized(reference) if kind == "image" else None)
        # masks: every training mask's labelled box, to find a mask copied as it is, flipped or moved by whole pixels
        self._boxes: dict[bytes, list[int]] = {}
        self._origins: list[tuple[int, int]] = []
        if kind == "mask":
            for j, m in enumerate(reference):
                key, origin = _box_key(m)
                self._boxes.setdefault(key, []).append(j)
                self._origins.append(origin)
        # the calibration: the reference's own images (large enough to be audited), against other patients
        eligible = np.flatnonzero(self._audited(reference))
        if len(eligible) == 0:
            raise InvalidInput(f"no training {kind} is large enough to calibrate the copy audit (at least {self.min_pixels} foreground pixels).")
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(eligible, size=min(calibration_size, len(eligible)), replace=False))
        matches = self._match(reference[sample], self.search.reference[sample], exclude=groups[sample])
        self.calibration_distance = matches.distance
        self.threshold = float(self.threshold_ratio * np.quantile(matches.distance, self.threshold_quantile))

    @classmethod
    def of_images(cls, images: np.ndarray, patients: np.ndarray | None = None, *, threshold_ratio: float = 0.8,
                  threshold_quantile: float = 0.01, calibration_size: int = 1000, seed: int = 0) -> CopyAudit:  # fmt: skip
        """Training images (M, 1, S, S) or (M, S, S); constant (blank) ones are left out of the reference."""
        stack = _as_stack(images, "training images", min_size=2).astype(np.float32, copy=False)
        kept = stack.reshape(len(stack), -1).std(axis=1) > 0
        return cls("image", stack, kept, patients, threshold_ratio=threshold_ratio, threshold_quantile=threshold_quantile,
                   calibration_size=calibration_size, seed=seed)  # fmt: skip

    @classmethod
    def of_masks(cls, masks: np.ndarray, patients: np.ndarray | None = None, *, threshold_ratio: float = 0.8,
                 threshold_quantile: float = 0.01, calibration_size: int = 1000, seed: int = 0,
                 min_fraction: float = MIN_MASK_FRACTION) -> CopyAudit:  # fmt: skip
        """Training label maps (M, S, S); empty ones are left out of the reference. Masks with fewer
        than ``min_fraction`` of their pixels labelled are not audited (nor calibrated on): another
        patient's small mask matches them as closely as a copy would."""
        stack = _as_stack(masks, "training masks", min_size=2)
        if not np.issubdtype(stack.dtype, np.integer) and not np.array_equal(stack, np.round(stack)):
            raise InvalidInput("training masks must be integer label maps.")
        stack = stack.astype(np.int64)
        if stack.min() < 0:
            raise InvalidInput(f"training masks must have non-negative labels, got {stack.min()}.")
        kept = (stack > 0).reshape(len(stack), -1).any(axis=1)
        min_pixels = max(1, math.ceil(min_fraction * stack.shape[1] * stack.shape[2]))
        return cls("mask", stack, kept, patients, threshold_ratio=threshold_ratio, threshold_quantile=threshold_quantile,
                   calibration_size=calibration_size, seed=seed, min_pixels=min_pixels, max_label=max(1, int(stack.max())))  # fmt: skip

    @property
    def n_reference(self) -> int:
        return len(self.kept_index)

    def _resized(self, x: np.ndarray) -> np.ndarray:
        """Images smaller than the search needs, enlarged to :data:`SMALL_TO` a side (bilinear; masks nearest)."""
        if self.side >= MIN_SIZE:
            return x
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
        if self.kind == "image":
            return F.interpolate(t, size=(SMALL_TO, SMALL_TO), mode="bilinear", align_corners=False)[:, 0].numpy()
        return F.interpolate(t, size=(SMALL_TO, SMALL_TO), mode="nearest")[:, 0].numpy().astype(x.dtype)

    def _prepare(self, x: np.ndarray) -> torch.Tensor:
        x = self._resized(x)
        if self.kind == "image":
            return prepare_images(x)
        masks = prepare_masks(x, self.max_label)
        # masks are smooth: searched at half resolution (where that leaves COARSE_SIZE px), 4× cheaper
        return F.avg_pool2d(masks, 2) if masks.shape[-1] >= 2 * COARSE_SIZE else masks

    def _audited(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "image":
            return np.ones(len(x), dtype=bool)
        return (np.asarray(x).reshape(len(x), -1) > 0).sum(axis=1) >= self.min_pixels

    def audit(self, queries: np.ndarray) -> CopyVerdicts:
        """Each query's best match in the reference, and whether it is flagged as a copy."""
        stack = _as_stack(queries, f"{self.kind}s to audit", min_size=2)
        if stack.shape[1] != self.side:
            raise InvalidInput(f"{self.kind}s to audit are {stack.shape[1]} pixels a side, the training ones {self.side}.")
        if self.kind == "mask":
            stack = np.clip(np.round(stack), 0, None).astype(np.int64)
        audited = self._audited(stack)
        n = len(stack)
        index, distance, poses = np.full(n, -1, dtype=np.int64), np.full(n, np.nan), [Pose(0, 0.0, 1.0, 0, 0)] * n
        rows = np.flatnonzero(audited)
        if len(rows):
            m = self._match(stack[rows], self._prepare(stack[rows]))
            found = m.index >= 0
            index[rows[found]] = self.kept_index[m.index[found]]
            distance[rows] = np.where(found, m.distance, np.sqrt(2.0))
            for r, p in zip(rows, m.poses):
                poses[r] = p
        flagged = audited & (np.nan_to_num(distance, nan=np.inf) <= self.threshold)
        return CopyVerdicts(index, distance, poses, audited, flagged)

    def _match(self, raw: np.ndarray, prepared: torch.Tensor, exclude: np.ndarray | None = None) -> Matches:
        """The search's matches of ``raw`` queries (``prepared`` alike); for masks, a query whose labelled
        box equals a training mask's (under a flip) is that mask at distance 0."""
        m = self.search.search(prepared, exclude=exclude, raw=self._resized(raw).astype(np.float32) if self.kind == "image" else None)
        if self.kind != "mask":
            return m
        index, similarity, poses = m.index.copy(), m.similarity.copy(), list(m.poses)
        for i, query in enumerate(raw):
            for flip in range(4):
                key, (y, x) = _box_key(np.ascontiguousarray(_flip_array(query, flip)))
                same = [j for j in self._boxes.get(key, []) if exclude is None or self.groups[j] != exclude[i]]
                if same:
                    y0, x0 = self._origins[same[0]]
                    index[i], similarity[i], poses[i] = same[0], 1.0, Pose(flip, 0.0, 1.0, x0 - x, y0 - y)
                    break
        return Matches(index, similarity, np.sqrt(np.clip(2.0 - 2.0 * similarity, 0.0, None)), poses)

    @property
    def rule(self) -> str:
        return (f"flag if the distance to the nearest training {self.kind} (under the search) <= {self.threshold_ratio:g} x "
                f"the {self.threshold_quantile:g} quantile of the training {self.kind}s' own distances to other patients' {self.kind}s")  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """What the audit searched and how its threshold was set (for a manifest or a report)."""
        out: dict[str, Any] = {
            "threshold": self.threshold,
            "rule": self.rule,
            "preparation": IMAGE_PREPARATION if self.kind == "image" else MASK_PREPARATION,
            "search": SEARCH,
            "reference": {"searched": self.n_reference, "of": self.n_total, "fraction_searched": self.n_reference / self.n_total,
                          "left_out": ("blank (constant) images" if self.kind == "image" else "empty masks")},
            "calibration": {"n": int(len(self.calibration_distance)), "how": self.groups_how,
                            "median_distance": float(np.median(self.calibration_distance)),
                            "quantile_distance": float(np.quantile(self.calibration_distance, self.threshold_quantile))},
        }  # fmt: skip
        if self.kind == "mask":
            out["min_pixels"] = self.min_pixels
            out["not_audited"] = f"masks with fewer than {self.min_pixels} labelled pixels (another patient's mask matches so small a mask as closely as a copy)"
        return out
