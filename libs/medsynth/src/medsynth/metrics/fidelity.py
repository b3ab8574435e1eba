"""Fidelity of synthetic images: FID, KID and Inception Score over features of a pluggable extractor.

The arithmetic (``frechet_distance``, ``kernel_inception_distance``, ``inception_score``) is pure
numpy/scipy and follows clean-fid (``cleanfid.fid.frechet_distance`` / ``kernel_distance``), so
clean-fid gives the same numbers from the same features. Features come from a ``FeatureExtractor``:

- ``InceptionExtractor``: ImageNet Inception-v3 pool3 (2048-d) from clean-fid's TorchScript file
  ``inception-2015-12-05.pt``, read from a local path (never downloaded here), "clean" preprocessing.
- ``EncoderExtractor``: global-average-pooled output of any encoder (e.g. a U-Net down path trained
  on the real data), at native size, with no preprocessing.

Scores from different extractors or preprocessing modes are not comparable, which is why
``fidelity_scores`` records both next to the sample counts. A score alone does not say whether it is
good: ``heldout_baseline`` scores real images of patients the generator (and the in-domain extractor)
never saw — the view's validation and test patients — against the training images, and the synthetic
images at the same count against the same training images, since FID and KID are biased by sample
count: the first is what a perfect generator of new patients would score. (``real_baseline``, two
halves of the training data against each other, is kept for callers of the library; an in-domain
extractor was trained on those very images, so it flatters the data and evaluations no longer use it.)

The Inception Score needs class probabilities, which only the ImageNet Inception file gives
(``InceptionExtractor.class_probabilities``); an in-domain encoder has none.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from scipy import linalg, special

from medsynth.core.errors import InvalidInput

INCEPTION_FILENAME = "inception-2015-12-05.pt"
INCEPTION_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
)
INCEPTION_SIZE = 299
CLEAN_PREPROCESSING = (
    "clean: grey x*255 as float32 (no uint8 quantisation), PIL bicubic resize to 299x299 in mode F, "
    "clip [0,255], replicate to RGB, (x-128)/128"
)


# --- pure arithmetic ---------------------------------------------------------------------------


def feature_statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of ``feats`` (N, D), as clean-fid computes them (``np.cov``)."""
    f = _check_features(feats, "feats")
    if f.shape[0] < 2:
        raise InvalidInput(f"feature statistics need at least 2 samples, got {f.shape[0]}.")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *, eps: float = 1e-6
) -> float:
    """Fréchet distance ``|mu1-mu2|² + Tr(S1 + S2 - 2 (S1 S2)^½)`` between two Gaussians.

    As clean-fid: ``scipy.linalg.sqrtm`` of ``S1 S2``; if that is not finite (a singular product),
    ``eps`` is added to both diagonals and the root taken again; an imaginary part from rounding is
    dropped when the diagonal's imaginary part is below 1e-3, otherwise InvalidInput. The result is
    not clipped at 0, so identical inputs may give a tiny negative number.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise InvalidInput(f"means must be vectors of one length, got shapes {mu1.shape} and {mu2.shape}.")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise InvalidInput(
            f"covariances must be ({d}, {d}) to match the means, got {sigma1.shape} and {sigma2.shape}."
        )
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise InvalidInput(f"{name} contains NaN or infinite values.")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"FID: sqrtm of a singular covariance product; adding {eps} to the diagonals.",
            RuntimeWarning,
            stacklevel=2,
        )
        offset = np.eye(d) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise InvalidInput(
                f"FID: sqrtm has an imaginary component of {np.abs(covmean.imag).max():.3g}; "
                "are the covariances positive semi-definite?"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_distance_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """FID between the Gaussians fitted to feature sets (N1, D) and (N2, D).

    Equals ``frechet_distance(*feature_statistics(feats1), *feature_statistics(feats2))``. When a set
    has fewer samples than dimensions (the usual case for medical cohorts with 2048-d Inception
    features) it avoids the D×D matrix square root, which takes about a minute for D = 2048 on two
    cores: with ``Σi = Ai Aiᵀ`` and ``Ai = (Fi - mean_i)ᵀ / √(Ni-1)``, the non-zero eigenvalues of
    ``Σ1 Σ2`` are the squared singular values of ``A1ᵀ A2``, so ``Tr((Σ1 Σ2)^½) = ‖A1ᵀ A2‖_*``, the
    nuclear norm of an N1×N2 matrix (exact, and free of the imaginary parts sqrtm can produce).
    clean-fid's sqrtm route differs by ~1e-8 relative there: the square roots of its rounding-noise
    eigenvalues add up (the tests check this route against 50-digit arithmetic).
    """
    f1, f2 = _check_features(feats1, "feats1"), _check_features(feats2, "feats2")
    if f1.shape[1] != f2.shape[1]:
        raise InvalidInput(f"feature dimensions differ: feats1 has {f1.shape[1]}, feats2 has {f2.shape[1]}.")
    (n1, d), n2 = f1.shape, f2.shape[0]
    if n1 < 2 or n2 < 2:
        raise InvalidInput(f"FID needs at least 2 samples per set, got n1={n1}, n2={n2}.")
    if min(n1, n2) >= d:
        return frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    a1 = (f1 - mu1) / np.sqrt(n1 - 1)
    a2 = (f2 - mu2) / np.sqrt(n2 - 1)
    tr_covmean = linalg.svdvals(a1 @ a2.T).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.sum(a1 * a1) + np.sum(a2 * a2) - 2.0 * tr_covmean)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # singular products are handled by the caller
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return linalg.sqrtm(a)


def kernel_inception_distance(
    feats1: np.ndarray,
    feats2: np.ndarray,
    *,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> float:
    """KID: the unbiased MMD² with kernel ``k(x, y) = (x·y/d + 1)³``, averaged over random subsets.

    Each of ``num_subsets`` rounds draws ``m = min(n1, n2, max_subset_size)`` rows from each set
    without replacement and adds
    ``[Σ_{i≠j} k(x_i,x_j) + Σ_{i≠j} k(y_i,y_j)] / (m(m-1)) - 2 Σ_{i,j} k(x_i,y_j) / m²``
    (Bińkowski et al. 2018; the same estimator as ``cleanfid.fid.kernel_distance``, which draws from
    numpy's global random state where this uses ``default_rng(seed)``). May be slightly negative.
    """
    f1, f2 = _check_features(feats1, "feats1"), _check_features(feats2, "feats2")
    if f1.shape[1] != f2.shape[1]:
        raise InvalidInput(f"feature dimensions differ: feats1 has {f1.shape[1]}, feats2 has {f2.shape[1]}.")
    if isinstance(num_subsets, bool) or not isinstance(num_subsets, int) or num_subsets < 1:
        raise InvalidInput(f"num_subsets must be a positive integer, got {num_subsets!r}.")
    m = min(f1.shape[0], f2.shape[0], max_subset_size)
    if m < 2:
        raise InvalidInput(
            f"KID needs subsets of at least 2 samples, got n1={f1.shape[0]}, n2={f2.shape[0]}, "
            f"max_subset_size={max_subset_size}."
        )
    d = f1.shape[1]
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = f2[rng.choice(f2.shape[0], m, replace=False)]
        y = f1[rng.choice(f1.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        within = kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)
        total += within / (m * (m - 1)) - 2.0 * kxy.sum() / m**2
    return float(total / num_subsets)


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))``: mean and standard deviation over splits.

    Args:
        probs: (N, K) class probabilities (rows non-negative, summing to 1 within 1e-3).
        splits: number of near-equal consecutive parts (``np.array_split``, so no sample is
            dropped, unlike the original code which drops the remainder of N / splits).

    Returns:
        ``(mean, std)`` of the per-split scores (std with ddof=0, as in the original code).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise InvalidInput(f"probs must be a non-empty (N, K) array, got shape {p.shape}.")
    if isinstance(splits, bool) or not isinstance(splits, int) or not 1 <= splits <= p.shape[0]:
        raise InvalidInput(f"splits must be an integer in [1, N={p.shape[0]}], got {splits!r}.")
    if not np.isfinite(p).all() or (p < 0).any():
        raise InvalidInput("probs must be finite and non-negative.")
    row_sums = p.sum(axis=1)
    worst = int(np.argmax(np.abs(row_sums - 1)))
    if abs(row_sums[worst] - 1) > 1e-3:
        raise InvalidInput(f"probs rows must sum to 1; row {worst} sums to {row_sums[worst]:.6g}.")
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = special.rel_entr(part, marginal).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def _check_features(feats: Any, name: str) -> np.ndarray:
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] == 0 or f.shape[1] == 0:
        raise InvalidInput(f"{name} must be a non-empty (N, D) array, got shape {f.shape}.")
    if not np.isfinite(f).all():
        raise InvalidInput(f"{name} contains NaN or infinite values.")
    return f


# --- extractors --------------------------------------------------------------------------------


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps images (N, 1, H, W) float in [0, 1] to features (N, dim).

    ``name`` and ``preprocessing`` are recorded next to every score computed from the features.
    """

    name: str
    preprocessing: str
    dim: int

    def __call__(self, images: torch.Tensor) -> np.ndarray: ...


def check_images(images: Any, name: str = "images") -> torch.Tensor:
    """``images`` as a float tensor (N, 1, H, W) in [0, 1], or InvalidInput naming what is wrong."""
    if not isinstance(images, torch.Tensor):
        raise InvalidInput(f"{name} must be a torch.Tensor, got {type(images).__name__}.")
    if images.ndim != 4 or images.shape[1] != 1:
        raise InvalidInput(f"{name} must have shape (N, 1, H, W), got {tuple(images.shape)}.")
    if not images.is_floating_point():
        raise InvalidInput(f"{name} must be floating point in [0, 1], got dtype {images.dtype}.")
    if images.numel():
        if not torch.isfinite(images).all():
            raise InvalidInput(f"{name} contains NaN or infinite values.")
        lo, hi = float(images.min()), float(images.max())
        if lo < 0.0 or hi > 1.0:
            raise InvalidInput(f"{name} must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}].")
    return images


def clean_resize(images: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """clean-fid's "clean" resize of grey images: (N, 1, H, W) in [0, 1] → (N, 1, size, size) in [0, 255].

    Equals ``cleanfid.resize.make_resizer("PIL", False, "bicubic", (size, size))`` applied to the
    image times 255 (each channel is resized alone there, so resizing the grey channel once and
    replicating it is the same).
    """
    from PIL import Image  # a torchvision dependency; only this extractor needs it

    arr = images[:, 0].detach().cpu().numpy().astype(np.float32) * np.float32(255.0)
    out = np.empty((arr.shape[0], 1, size, size), dtype=np.float32)
    for i, img in enumerate(arr):
        resized = Image.fromarray(img).resize((size, size), resample=Image.Resampling.BICUBIC)
        out[i, 0] = np.asarray(resized, dtype=np.float32).clip(0, 255)
    return torch.from_numpy(out)


class InceptionExtractor:
    """ImageNet Inception-v3 pool3 features (2048-d) from clean-fid's TorchScript file.

    The file is the one clean-fid and stylegan2-ada use (``INCEPTION_URL``); it is read from
    ``weights_path`` (the file, or a folder holding ``inception-2015-12-05.pt``) and never
    downloaded. As ``cleanfid.inception_torchscript.InceptionV3W`` in "clean" mode, the features are
    ``module.layers((x - 128) / 128)`` for images resized to 299×299 in [0, 255]
    (see ``CLEAN_PREPROCESSING``).

    Raises:
        InvalidInput: the file is absent, or is not a TorchScript module with a ``layers`` trunk.
    """

    name = "inception-v3-pool3 (clean-fid torchscript inception-2015-12-05)"
    preprocessing = CLEAN_PREPROCESSING
    dim = 2048

    def __init__(self, weights_path: str | Path, *, device: str | torch.device = "cpu") -> None:
        path = Path(weights_path)
        if path.is_dir():
            path = path / INCEPTION_FILENAME
        if not path.is_file():
            raise InvalidInput(
                f"Inception weights not found at {path}. Download {INCEPTION_URL} (the TorchScript "
                f"file clean-fid uses) on a machine with network access and set weights_path to it; "
                "medsynth never downloads weights."
            )
        self.weights_path = path
        self.device = torch.device(device)
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated, but this file is TorchScript
                warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
                module = torch.jit.load(str(path), map_location=self.device)
        except (RuntimeError, ValueError, OSError) as exc:
            raise InvalidInput(f"could not load {path} as a TorchScript module: {exc}") from exc
        layers = getattr(module, "layers", None)
        if layers is None:
            raise InvalidInput(
                f"{path} has no `layers` submodule; expected clean-fid's {INCEPTION_FILENAME}."
            )
        self._layers = layers.eval()
        self._sha256: str | None = None
        output = getattr(module, "output", None)  # the 2048 → 1008 ImageNet logit layer of clean-fid's file
        weight = getattr(output, "weight", None) if output is not None else None
        self._logit_weight = weight.detach().to(torch.float64).cpu() if isinstance(weight, torch.Tensor) else None

    @property
    def recipe(self) -> dict[str, Any]:
        """The file this extractor reads and its SHA-256 (hashed once)."""
        if self._sha256 is None:
            digest = hashlib.sha256()
            with open(self.weights_path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            self._sha256 = digest.hexdigest()
        return {"kind": "ImageNet Inception-v3 (clean-fid TorchScript)", "weights": str(self.weights_path),
                "sha256": self._sha256, "class_probabilities": self.has_classes}

    @property
    def has_classes(self) -> bool:
        """Whether the file has its ImageNet output layer (``output.weight``), which the Inception Score needs."""
        return self._logit_weight is not None

    def class_probabilities(self, features: np.ndarray) -> np.ndarray:
        """ImageNet class probabilities (N, 1008) from this extractor's pool3 ``features`` (N, 2048):
        ``softmax(features @ output.weightᵀ)`` without the output bias, as the original Inception Score
        code (Salimans et al. 2016) and stylegan2-ada's ``no_output_bias=True`` compute them.

        Raises:
            InvalidInput: the file has no ``output`` layer, or ``features`` are not (N, 2048).
        """
        if self._logit_weight is None:
            raise InvalidInput(f"{self.weights_path} has no `output` layer with a weight: no class probabilities, "
                               "so no Inception Score")
        f = torch.from_numpy(_check_features(features, "features"))
        if f.shape[1] != self._logit_weight.shape[1]:
            raise InvalidInput(f"features have {f.shape[1]} dimensions; the output layer takes {self._logit_weight.shape[1]}.")
        return torch.softmax(f @ self._logit_weight.T, dim=1).numpy()

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        x = clean_resize(check_images(images)).expand(-1, 3, -1, -1)
        with torch.no_grad():
            feats = self._layers.forward(((x - 128.0) / 128.0).to(self.device))
        feats = feats.reshape(x.shape[0], -1)
        if feats.shape[1] != self.dim:
            raise InvalidInput(f"{self.weights_path} gave {feats.shape[1]} features per image, expected {self.dim}.")
        return feats.cpu().numpy().astype(np.float64)


class EncoderExtractor:
    """In-domain features: the global-average-pooled output of ``encoder`` on [0, 1] grey images.

    The encoder may return a feature map (N, C, *spatial), pooled to (N, C), or vectors (N, D); if it
    returns a list or tuple (e.g. skip connections), the last element (the deepest) is used. It runs
    in eval mode under ``no_grad``; its training flag is restored afterwards. ``dim`` is found at
    construction by running one zero image of ``probe_size``. ``recipe`` says how the encoder was made.
    The encoder is moved to ``device`` (in place: the extractor owns it from then on); images are
    copied there batch by batch and the features come back to the CPU.
    """

    preprocessing = "none: [0,1] grey at native size"

    def __init__(
        self,
        encoder: torch.nn.Module,
        name: str,
        *,
        probe_size: tuple[int, int] = (64, 64),
        device: str | torch.device = "cpu",
        recipe: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(encoder, torch.nn.Module):
            raise InvalidInput(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}.")
        if not isinstance(name, str) or not name.strip():
            raise InvalidInput(f"extractor name must be a non-empty string, got {name!r}.")
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device)
        self.name = name
        self.dim = int(self._features(torch.zeros((1, 1, *probe_size))).shape[1])
        #: How the encoder was made (e.g. its segmentation run, training settings and the SHA-256 of its
        #: weights), recorded next to every score computed through it.
        self.recipe: dict[str, Any] = {"kind": "in-domain encoder", **dict(recipe or {})}

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        return self._features(check_images(images)).numpy().astype(np.float64)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            with torch.no_grad():
                out = self.encoder(x.to(self.device))
        finally:
            self.encoder.train(was_training)
        if isinstance(out, (list, tuple)) and out:
            out = out[-1]
        if not isinstance(out, torch.Tensor) or out.ndim < 2 or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InvalidInput(
                f"encoder {self.name!r} must return (N, C, ...) or (N, D) for N={x.shape[0]} images, got {shape}."
            )
        if out.ndim > 2:
            out = out.mean(dim=tuple(range(2, out.ndim)))
        return out.float().cpu()


# --- scores ------------------------------------------------------------------------------------


def extract_features(images: torch.Tensor, extractor: FeatureExtractor, *, batch_size: int = 64) -> np.ndarray:
    """Run ``extractor`` over ``images`` in batches; (N, extractor.dim) float64."""
    images = check_images(images)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInput(f"batch_size must be a positive integer, got {batch_size!r}.")
    parts = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        feats = np.asarray(extractor(batch), dtype=np.float64)
        if feats.shape != (batch.shape[0], extractor.dim):
            raise InvalidInput(
                f"extractor {extractor.name!r} returned shape {feats.shape}, "
                f"expected ({batch.shape[0]}, {extractor.dim})."
            )
        parts.append(feats)
    return np.concatenate(parts) if parts else np.empty((0, extractor.dim))


def fidelity_from_features(
    f_real: np.ndarray,
    f_fake: np.ndarray,
    *,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """FID and KID between two feature sets (N, D), with the counts that produced them.

    Returns:
        ``{"fid", "kid", "kid_subset_size", "kid_subsets", "n_real", "n_fake"}``; the KID subset
        used is ``min(kid_subset_size, n_real, n_fake)``.
    """
    f_real, f_fake = _check_features(f_real, "f_real"), _check_features(f_fake, "f_fake")
    n_real, n_fake = int(f_real.shape[0]), int(f_fake.shape[0])
    if n_real < 2 or n_fake < 2:
        raise InvalidInput(f"fidelity needs at least 2 real and 2 fake images, got n_real={n_real}, n_fake={n_fake}.")
    subset = min(kid_subset_size, n_real, n_fake)
    return {
        "fid": frechet_distance_from_features(f_real, f_fake),
        "kid": kernel_inception_distance(f_real, f_fake, num_subsets=kid_subsets, max_subset_size=subset, seed=seed),
        "kid_subset_size": subset,
        "kid_subsets": kid_subsets,
        "n_real": n_real,
        "n_fake": n_fake,
    }


def fidelity_scores(
    real: torch.Tensor,
    fake: torch.Tensor,
    extractor: FeatureExtractor,
    *,
    batch_size: int = 64,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """FID and KID between real and synthetic images, with what produced them.

    Args:
        real, fake: (N, 1, H, W) float in [0, 1]; at least 2 images each (FID with fewer images
            than feature dimensions is computed but strongly biased: compare only equal counts,
            e.g. against :func:`real_baseline`).
        extractor: a ``FeatureExtractor``.
        kid_subset_size: the largest KID subset; the one used is ``min(it, n_real, n_fake)``.

    Returns:
        ``{"fid", "kid", "kid_subset_size", "kid_subsets", "extractor", "preprocessing",
        "feature_dim", "n_real", "n_fake"}``.
    """
    real, fake = check_images(real, "real"), check_images(fake, "fake")
    n_real, n_fake = int(real.shape[0]), int(fake.shape[0])
    if n_real < 2 or n_fake < 2:
        raise InvalidInput(f"fidelity needs at least 2 real and 2 fake images, got n_real={n_real}, n_fake={n_fake}.")
    f_real = extract_features(real, extractor, batch_size=batch_size)
    f_fake = extract_features(fake, extractor, batch_size=batch_size)
    scores = fidelity_from_features(f_real, f_fake, kid_subset_size=kid_subset_size, kid_subsets=kid_subsets, seed=seed)
    return scores | {"extractor": extractor.name, "preprocessing": extractor.preprocessing, "feature_dim": extractor.dim}


# --- real-versus-real baselines ------------------------------------------------------------------

MIN_BASELINE_IMAGES = 4  # a side: FID needs 2, and fewer than 4 images say nothing about a distribution


def subsample_indices(n: int, k: int, *, seed: int = 0, stream: int = 0) -> np.ndarray:
    """``k`` of ``range(n)`` drawn without replacement, sorted; seeded by ``(seed, stream)`` (all of
    them, in order, when ``k >= n``)."""
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, stream]).choice(n, k, replace=False))


#: The streams of :func:`heldout_baseline`'s draws: held-out real images and synthetic images.
HELDOUT_STREAM, SYNTHETIC_STREAM = 1, 2


def heldout_baseline(
    f_train: np.ndarray,
    f_heldout: np.ndarray,
    f_fake: np.ndarray,
    *,
    seed: int = 0,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
) -> dict[str, Any]:
    """What FID / KID are for real images of NEW patients, and the synthetic score at the same count.

    ``f_train`` are the features of the training images (the generator's, and the in-domain
    extractor's, training data); ``f_heldout`` those of real images of patients neither saw (the
    view's validation and test patients); ``f_fake`` those of the synthetic images. With
    ``n = min(len(f_heldout), len(f_fake))``, n held-out images and n synthetic images are drawn
    without replacement (:func:`subsample_indices`, streams ``HELDOUT_STREAM`` / ``SYNTHETIC_STREAM``
    of ``seed``), and each set is scored against all of ``f_train``:

    - ``real_vs_real``: held-out versus training — the score of a perfect generator of new
      patients, given n images;
    - ``synthetic_vs_real``: synthetic versus training, at the same n (FID is biased by sample count:
      only scores at equal counts compare).

    Raises:
        InvalidInput: n is below ``MIN_BASELINE_IMAGES``, fewer than 2 training images, or feature
            dimensions differ.

    Returns:
        ``{"n", "n_train", "n_heldout_available", "n_synthetic_available", "real_vs_real",
        "synthetic_vs_real"}``, the inner dicts as :func:`fidelity_from_features` returns them (their
        ``n_real`` is the training count, ``n_fake`` is n).
    """
    f_train, f_heldout, f_fake = (_check_features(f, name) for f, name in
                                  ((f_train, "f_train"), (f_heldout, "f_heldout"), (f_fake, "f_fake")))
    if not f_train.shape[1] == f_heldout.shape[1] == f_fake.shape[1]:
        raise InvalidInput(f"feature dimensions differ: train {f_train.shape[1]}, held-out {f_heldout.shape[1]}, "
                           f"synthetic {f_fake.shape[1]}.")
    n = min(len(f_heldout), len(f_fake))
    if n < MIN_BASELINE_IMAGES:
        raise InvalidInput(f"a held-out baseline needs at least {MIN_BASELINE_IMAGES} images a side; n = min({len(f_heldout)} "
                           f"held-out real, {len(f_fake)} synthetic) = {n}.")
    held = f_heldout[subsample_indices(len(f_heldout), n, seed=seed, stream=HELDOUT_STREAM)]
    fake = f_fake[subsample_indices(len(f_fake), n, seed=seed, stream=SYNTHETIC_STREAM)]
    kwargs = {"kid_subset_size": kid_subset_size, "kid_subsets": kid_subsets, "seed": seed}
    return {
        "n": int(n),
        "n_train": int(len(f_train)),
        "n_heldout_available": int(len(f_heldout)),
        "n_synthetic_available": int(len(f_fake)),
        "real_vs_real": fidelity_from_features(f_train, held, **kwargs),
        "synthetic_vs_real": fidelity_from_features(f_train, fake, **kwargs),
    }



def split_halves(n: int, groups: Sequence[Any] | np.ndarray | None = None, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Two disjoint, seeded halves of ``n`` items: ``(indices A, indices B, how)``.

    By group (patient) when ``groups`` is given and holds at least 2 groups: the groups, in an order
    shuffled by ``seed``, go one at a time to the half with fewer items so far, so no patient is in
    both halves and the halves are about equally large. If that leaves a half with fewer than 2
    items (or no groups were given), items are split instead: a seeded permutation, A = the first
    ``n // 2``. ``how`` says which was done, e.g. ``"by patient (3 | 2 patients)"`` or ``"by item"``.

    Raises:
        InvalidInput: fewer than 4 items (each half needs 2), or ``groups`` of the wrong length.
    """
    if n < 4:
        raise InvalidInput(f"a real-versus-real baseline needs at least 4 real images (2 per half), got {n}.")
    rng = np.random.default_rng(seed)
    if groups is not None:
        g = np.asarray(groups).astype(str)
        if g.shape != (n,):
            raise InvalidInput(f"groups must give one group per item ({n}), got shape {g.shape}.")
        ids = np.unique(g)
        if len(ids) >= 2:
            halves: tuple[list[str], list[str]] = ([], [])
            counts = [0, 0]
            sizes = {gid: int(c) for gid, c in zip(*np.unique(g, return_counts=True))}
            for gid in ids[rng.permutation(len(ids))]:
                k = 0 if counts[0] <= counts[1] else 1
                halves[k].append(gid)
                counts[k] += sizes[gid]
            if min(counts) >= 2:
                a, b = (np.flatnonzero(np.isin(g, h)) for h in halves)
                return a, b, f"by patient ({len(halves[0])} | {len(halves[1])} patients)"
    order = rng.permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :]), "by item"


def real_baseline(
    f_real: np.ndarray,
    f_fake: np.ndarray,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    seed: int = 0,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
) -> dict[str, Any]:
    """What FID / KID look like between two halves of the REAL data, and the synthetic score at the
    same counts, so that a score can be read against real-data variability.

    Evaluations use :func:`heldout_baseline` instead: the halves here are both training data, which an
    in-domain extractor was trained on, so this baseline is lower than a generator of new patients could
    reach. Kept for callers who have no held-out patients (and label it as such).

    The real features are split by :func:`split_halves` (by patient when ``groups`` are given) into
    A and B; then

    - ``real_vs_real``: A versus B — the score of a perfect generator, given this much real data;
    - ``synthetic_vs_real``: A versus ``len(B)`` synthetic samples drawn without replacement
      (seeded; all of them if there are fewer) — the synthetic score at the baseline's counts, as
      FID is biased by sample count and only scores at equal counts compare.

    Both use the same features (so the same extractor and preprocessing) as the main score.

    Returns:
        ``{"split", "n_a", "n_b", "real_vs_real": {...}, "synthetic_vs_real": {...}}``, the inner
        dicts as :func:`fidelity_from_features` returns them.
    """
    f_real, f_fake = _check_features(f_real, "f_real"), _check_features(f_fake, "f_fake")
    a, b, how = split_halves(len(f_real), groups, seed=seed)
    rng = np.random.default_rng(seed + 1)
    take = np.sort(rng.choice(len(f_fake), min(len(f_fake), len(b)), replace=False))
    kwargs = {"kid_subset_size": kid_subset_size, "kid_subsets": kid_subsets, "seed": seed}
    return {
        "split": how,
        "n_a": int(len(a)),
        "n_b": int(len(b)),
        "real_vs_real": fidelity_from_features(f_real[a], f_real[b], **kwargs),
        "synthetic_vs_real": fidelity_from_features(f_real[a], f_fake[take], **kwargs),
    }
