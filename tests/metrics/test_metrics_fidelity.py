"""FID / KID / IS arithmetic against clean-fid, MONAI and closed forms; extractors; fidelity_scores."""

from __future__ import annotations

import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from cleanfid import fid as cleanfid_fid
from cleanfid.inception_torchscript import InceptionV3W
from cleanfid.resize import build_resizer, make_resizer
from monai.metrics import FIDMetric

from medsynth.core.errors import InvalidInput
from medsynth.metrics.fidelity import (
    INCEPTION_FILENAME,
    INCEPTION_URL,
    EncoderExtractor,
    FeatureExtractor,
    InceptionExtractor,
    clean_resize,
    extract_features,
    feature_statistics,
    fidelity_from_features,
    fidelity_scores,
    frechet_distance,
    frechet_distance_from_features,
    heldout_baseline,
    inception_score,
    kernel_inception_distance,
    real_baseline,
    split_halves,
    subsample_indices,
)

# Warnings raised inside the reference implementations (clean-fid, MONAI) and TorchScript itself.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Matrix is singular:scipy.linalg.LinAlgWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered in scalar divide:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning"),
]


def _features(rng: np.random.Generator, n: int, d: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    mix = np.random.default_rng(d).normal(size=(d, d)) / np.sqrt(d)  # one shared mixing per d
    return (rng.normal(size=(n, d)) @ mix) * scale + shift


# --- Fréchet distance ----------------------------------------------------------------------------


@pytest.mark.parametrize(("n1", "n2", "d"), [(300, 200, 8), (40, 30, 64)])  # the second is rank-deficient
def test_frechet_distance_matches_cleanfid(n1: int, n2: int, d: int) -> None:
    rng = np.random.default_rng(0)
    f1, f2 = _features(rng, n1, d), _features(rng, n2, d, shift=0.3, scale=1.5)
    ours = frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
    reference = cleanfid_fid.fid_from_feats(f1, f2)
    assert ours == pytest.approx(reference, rel=1e-8)
    assert ours > 0.5


@pytest.mark.parametrize(("n1", "n2", "d"), [(300, 200, 8), (40, 30, 64), (20, 90, 64)])
def test_frechet_distance_from_features_matches_cleanfid(n1: int, n2: int, d: int) -> None:
    # n < d takes the nuclear-norm route (no D x D sqrtm); n >= d the covariance route.
    rng = np.random.default_rng(7)
    f1, f2 = _features(rng, n1, d), _features(rng, n2, d, shift=0.1, scale=0.7)
    # For n < d clean-fid's sqrtm of the singular product is ~3e-8 (relative) off: the square roots
    # of its rounding-noise eigenvalues add up, and its eps fallback adds 1e-6 to the diagonals.
    rel = 1e-10 if min(n1, n2) >= d else 1e-6
    assert frechet_distance_from_features(f1, f2) == pytest.approx(cleanfid_fid.fid_from_feats(f1, f2), rel=rel)


def test_frechet_distance_from_features_is_exact_against_50_digit_arithmetic() -> None:
    import mpmath as mp
    mp.mp.dps = 50
    rng = np.random.default_rng(1)
    f1, f2 = rng.normal(size=(6, 10)), rng.normal(size=(5, 10)) + 0.3

    def stats(f: np.ndarray) -> tuple[list, object]:
        n, d = f.shape
        mu = [mp.fsum(mp.mpf(f[i, j]) for i in range(n)) / n for j in range(d)]
        cov = mp.matrix(d, d)
        for a in range(d):
            for b in range(d):
                cov[a, b] = mp.fsum((mp.mpf(f[i, a]) - mu[a]) * (mp.mpf(f[i, b]) - mu[b]) for i in range(n)) / (n - 1)
        return mu, cov

    (mu1, s1), (mu2, s2) = stats(f1), stats(f2)
    eigenvalues = mp.eig(s1 * s2, left=False, right=False)
    tr_covmean = mp.fsum(mp.sqrt(mp.re(e)) for e in eigenvalues if mp.re(e) > 0)
    exact = (
        mp.fsum((a - b) ** 2 for a, b in zip(mu1, mu2))
        + mp.fsum(s1[i, i] + s2[i, i] for i in range(10))
        - 2 * tr_covmean
    )
    assert frechet_distance_from_features(f1, f2) == pytest.approx(float(exact), rel=1e-12)
    assert frechet_distance(*feature_statistics(f1), *feature_statistics(f2)) == pytest.approx(float(exact), rel=1e-6)


def test_frechet_distance_from_features_is_fast_for_small_sets_of_2048_d_features() -> None:
    rng = np.random.default_rng(8)
    f1, f2 = rng.normal(size=(30, 2048)), rng.normal(size=(20, 2048)) + 0.01
    # Same expectation by construction: |mu1 - mu2|^2 is ~2048 * (0.01^2 + 1/30 + 1/20).
    value = frechet_distance_from_features(f1, f2)
    a1, a2 = f1 - f1.mean(0), f2 - f2.mean(0)
    gram_roots = np.sqrt(np.clip(np.linalg.eigvalsh((a1 @ a2.T) @ (a2 @ a1.T)), 0, None)).sum()
    by_hand = (
        np.sum((f1.mean(0) - f2.mean(0)) ** 2)
        + np.sum(a1**2) / 29
        + np.sum(a2**2) / 19
        - 2 * gram_roots / np.sqrt(29 * 19)
    )
    assert value == pytest.approx(by_hand, rel=1e-8)


def test_frechet_distance_of_diagonal_gaussians_in_closed_form() -> None:
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    v1, v2 = rng.uniform(0.1, 3.0, size=5), rng.uniform(0.1, 3.0, size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)
    # One dimension by hand: means 0 and 3, variances 1 and 4 → 9 + (1 + 4 - 2*2) = 10.
    assert frechet_distance([0.0], [[1.0]], [3.0], [[4.0]]) == pytest.approx(10.0)


def test_frechet_distance_reproduces_monai_example() -> None:
    # MONAI's FIDMetric test: these two 3x2 feature sets give 0.4444 (= 1/9 + 1/3 by hand).
    x = np.array([[1, 2], [1, 2], [1, 2]], dtype=np.float64)
    y = np.array([[2, 2], [1, 2], [1, 2]], dtype=np.float64)
    ours = frechet_distance(*feature_statistics(x), *feature_statistics(y))
    assert ours == pytest.approx(4 / 9, abs=1e-6)
    assert ours == pytest.approx(float(FIDMetric()(torch.tensor(x), torch.tensor(y))), abs=1e-6)
    assert frechet_distance_from_features(x, y) == pytest.approx(4 / 9, abs=1e-12)


def test_frechet_distance_is_symmetric_and_zero_on_identical_sets() -> None:
    rng = np.random.default_rng(2)
    s1, s2 = feature_statistics(_features(rng, 100, 6)), feature_statistics(_features(rng, 80, 6, shift=1.0))
    assert frechet_distance(*s1, *s1) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(*s1, *s2) == pytest.approx(frechet_distance(*s2, *s1), rel=1e-8)


def test_frechet_distance_rejects_mismatched_shapes() -> None:
    with pytest.raises(InvalidInput, match=r"\(3,\) and \(4,\)"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(InvalidInput, match=r"\(3, 3\)"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(InvalidInput, match="at least 2 samples, got 1"):
        feature_statistics(np.ones((1, 4)))


# --- KID --------------------------------------------------------------------------------------


def test_kid_matches_cleanfid_when_the_subset_is_the_whole_set() -> None:
    rng = np.random.default_rng(3)
    f1, f2 = _features(rng, 60, 16), _features(rng, 60, 16, shift=0.2)
    ours = kernel_inception_distance(f1, f2, num_subsets=1, max_subset_size=1000)
    reference = cleanfid_fid.kernel_distance(f1, f2, num_subsets=1, max_subset_size=1000)
    assert ours == pytest.approx(reference, rel=1e-9)
    assert ours > 0


def test_kid_is_the_unbiased_mmd_with_cubic_kernel_by_hand() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)) + 0.5

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (a @ b / 3 + 1) ** 3

    m = 5
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    assert kernel_inception_distance(x, y, num_subsets=3) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_kid_separates_distributions_and_is_seeded() -> None:
    rng = np.random.default_rng(5)
    a, b, shifted = _features(rng, 400, 8), _features(rng, 400, 8), _features(rng, 400, 8, shift=0.5)
    same = kernel_inception_distance(a, b, num_subsets=20, max_subset_size=100, seed=1)
    different = kernel_inception_distance(a, shifted, num_subsets=20, max_subset_size=100, seed=1)
    assert abs(same) < different / 20
    assert same == kernel_inception_distance(a, b, num_subsets=20, max_subset_size=100, seed=1)
    assert same != kernel_inception_distance(a, b, num_subsets=20, max_subset_size=100, seed=2)


def test_kid_rejects_tiny_or_mismatched_sets() -> None:
    with pytest.raises(InvalidInput, match="n1=1, n2=5"):
        kernel_inception_distance(np.ones((1, 3)), np.ones((5, 3)))
    with pytest.raises(InvalidInput, match="feats1 has 3, feats2 has 4"):
        kernel_inception_distance(np.ones((5, 3)), np.ones((5, 4)))


# --- Inception Score --------------------------------------------------------------------------


def test_inception_score_extremes_by_hand() -> None:
    confident_and_diverse = np.tile(np.eye(4), (5, 1))  # 20 one-hot rows, 4 classes equally often
    assert inception_score(confident_and_diverse, splits=1) == pytest.approx((4.0, 0.0))
    assert inception_score(confident_and_diverse, splits=5)[0] == pytest.approx(4.0)
    assert inception_score(np.full((10, 7), 1 / 7), splits=2) == pytest.approx((1.0, 0.0))


def test_inception_score_matches_the_definition() -> None:
    rng = np.random.default_rng(6)
    p = rng.dirichlet(np.full(5, 0.3), size=30)
    scores = []
    for part in (p[:15], p[15:]):
        marginal = part.mean(axis=0)
        scores.append(np.exp(np.mean([np.sum(row * np.log(row / marginal)) for row in part])))
    assert inception_score(p, splits=2) == pytest.approx((np.mean(scores), np.std(scores)), rel=1e-10)


def test_inception_score_rejects_non_probabilities() -> None:
    with pytest.raises(InvalidInput, match="row 1 sums to 2"):
        inception_score(np.array([[0.5, 0.5], [1.0, 1.0]]), splits=1)
    with pytest.raises(InvalidInput, match="splits"):
        inception_score(np.full((3, 2), 0.5), splits=4)


# --- Inception extractor (local TorchScript file only) -----------------------------------------


class _FakeInceptionLayers(torch.nn.Module):
    """Stands in for the real trunk: (N, 3, 299, 299) in [-1, 1] → (N, 2048, 1, 1), nonlinear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=5, stride=4)
        self.proj = torch.nn.Conv2d(8, 2048, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[2] == 299 and x.shape[3] == 299
        return torch.nn.functional.adaptive_avg_pool2d(self.proj(torch.relu(self.conv(x))), 1)


class _FakeInception(torch.nn.Module):
    """Same call convention as clean-fid's file: ``.layers`` plus ``forward(x, return_features)``."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = _FakeInceptionLayers()

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.layers(x)


@pytest.fixture(scope="module")
def fake_inception_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inception")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated; the real file is TorchScript
        torch.jit.save(torch.jit.script(_FakeInception().eval()), str(folder / INCEPTION_FILENAME))
    return folder


def _smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, 1, 4, 4), generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def test_inception_extractor_refuses_a_missing_file_without_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("attempted a download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    missing = tmp_path / "weights" / INCEPTION_FILENAME
    with pytest.raises(InvalidInput) as info:
        InceptionExtractor(missing)
    assert str(missing) in str(info.value) and INCEPTION_URL in str(info.value)
    assert not missing.exists()


def test_inception_extractor_refuses_a_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / INCEPTION_FILENAME
    bad.write_bytes(b"not a torchscript archive")
    with pytest.raises(InvalidInput, match="could not load"):
        InceptionExtractor(bad)


class _NoLayers(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_inception_extractor_refuses_a_torchscript_file_without_layers(tmp_path: Path) -> None:
    path = tmp_path / INCEPTION_FILENAME
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(_NoLayers()), str(path))
    with pytest.raises(InvalidInput, match="has no `layers` submodule"):
        InceptionExtractor(path)


def test_clean_resize_equals_cleanfid_pil_resizer() -> None:
    images = _smooth_images(2, 37, seed=0)
    ours = clean_resize(images)
    resize = make_resizer("PIL", False, "bicubic", (299, 299))
    for i in range(2):
        rgb = np.repeat(images[i, 0].numpy()[:, :, None] * 255, 3, axis=2).astype(np.float32)
        reference = resize(rgb)  # (299, 299, 3)
        np.testing.assert_array_equal(ours[i, 0].numpy(), reference[:, :, 0])


def test_inception_extractor_matches_cleanfid_wrapper_on_the_same_file(fake_inception_dir: Path) -> None:
    extractor = InceptionExtractor(fake_inception_dir)  # a folder holding the file is accepted
    assert isinstance(extractor, FeatureExtractor)
    assert extractor.dim == 2048 and "clean" in extractor.preprocessing
    images = _smooth_images(3, 48, seed=1)
    ours = extractor(images)
    assert ours.shape == (3, 2048) and np.isfinite(ours).all()

    # clean-fid itself: its "clean" resizer on [0, 255] RGB arrays, then its InceptionV3W wrapper.
    wrapper = InceptionV3W(str(fake_inception_dir), download=False)
    resize = build_resizer("clean")
    rgb = [np.repeat(img[0].numpy()[:, :, None] * 255, 3, axis=2).astype(np.float32) for img in images]
    batch = torch.stack([torch.from_numpy(resize(x).transpose(2, 0, 1)) for x in rgb])
    with torch.no_grad():
        reference = wrapper(batch).numpy()
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ours[0], ours[1])  # the features do depend on the image

    same = InceptionExtractor(fake_inception_dir / INCEPTION_FILENAME)(images)
    np.testing.assert_array_equal(ours, same)


def test_inception_extractor_rejects_bad_images(fake_inception_dir: Path) -> None:
    extractor = InceptionExtractor(fake_inception_dir)
    with pytest.raises(InvalidInput, match=r"\(N, 1, H, W\), got \(2, 3, 8, 8\)"):
        extractor(torch.zeros(2, 3, 8, 8))
    with pytest.raises(InvalidInput, match=r"\[0, 1\], got values in \[0, 2\]"):
        extractor(torch.full((1, 1, 8, 8), 2.0).index_fill_(2, torch.tensor([0]), 0.0))


# --- encoder extractor and fidelity_scores ------------------------------------------------------


def _encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, stride=2, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 6, 3, stride=2, padding=1),
    )


def test_encoder_extractor_pools_feature_maps_and_restores_mode() -> None:
    encoder = _encoder().train()
    extractor = EncoderExtractor(encoder, "toy-unet-down")
    assert isinstance(extractor, FeatureExtractor)
    assert extractor.dim == 6 and extractor.preprocessing.startswith("none")
    images = _smooth_images(4, 32, seed=2)
    feats = extractor(images)
    encoder.eval()
    with torch.no_grad():
        expected = encoder(images).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-6, atol=1e-6)
    encoder.train()
    extractor(images)
    assert encoder.training is True  # features ran in eval mode (BatchNorm running stats), mode restored


def test_encoder_extractor_runs_its_encoder_on_its_device() -> None:
    """The encoder is moved to the extractor's device (the evaluator's MEDSYNTH_DEVICE), not left where it was
    loaded (the CPU) while the images go to the device; features come back to the CPU as float64."""
    moved: list[torch.device] = []

    class Tracked(torch.nn.Sequential):
        def to(self, *args, **kwargs):  # type: ignore[override]
            moved.append(torch.device(args[0] if args else kwargs["device"]))
            return super().to(*args, **kwargs)

    encoder = Tracked(*_encoder())
    extractor = EncoderExtractor(encoder, "toy", device="cpu")
    assert moved == [torch.device("cpu")] and extractor.encoder is encoder
    feats = extractor(_smooth_images(3, 32, seed=1))
    assert feats.dtype == np.float64 and feats.shape == (3, 6)


class _Skips(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, x.flatten(1)[:, :5] * 2]


def test_encoder_extractor_takes_vectors_and_the_deepest_of_a_list() -> None:
    extractor = EncoderExtractor(_Skips(), "skips", probe_size=(4, 4))
    assert extractor.dim == 5
    images = torch.rand(3, 1, 4, 4)
    np.testing.assert_allclose(extractor(images), images.flatten(1)[:, :5].numpy() * 2, rtol=1e-6)


def test_fidelity_scores_record_their_provenance_and_agree_with_cleanfid() -> None:
    extractor = EncoderExtractor(_encoder(), "toy-unet-down")
    real = _smooth_images(40, 32, seed=3)
    fake_good = _smooth_images(40, 32, seed=4)
    fake_bad = (fake_good * 0.3).clamp(0, 1)
    good = fidelity_scores(real, fake_good, extractor, batch_size=16, kid_subset_size=30, kid_subsets=10)
    bad = fidelity_scores(real, fake_bad, extractor, batch_size=16, kid_subset_size=30, kid_subsets=10)
    assert good["extractor"] == "toy-unet-down" and good["preprocessing"] == extractor.preprocessing
    assert (good["n_real"], good["n_fake"], good["feature_dim"]) == (40, 40, 6)
    assert good["kid_subset_size"] == 30 and good["kid_subsets"] == 10
    assert bad["fid"] > 3 * good["fid"] and bad["kid"] > good["kid"]
    # "Through clean-fid": the same features give clean-fid's FID.
    f_real, f_fake = extract_features(real, extractor, batch_size=7), extract_features(fake_good, extractor)
    assert good["fid"] == pytest.approx(cleanfid_fid.fid_from_feats(f_real, f_fake), rel=1e-6)
    same = fidelity_scores(real, real, extractor)
    assert same["fid"] == pytest.approx(0.0, abs=1e-6) and same["kid_subset_size"] == 40


def test_fidelity_scores_with_the_torchscript_inception_path(fake_inception_dir: Path) -> None:
    extractor = InceptionExtractor(fake_inception_dir)
    scores = fidelity_scores(_smooth_images(4, 24, 5), _smooth_images(3, 24, 6), extractor, batch_size=2)
    assert scores["extractor"] == extractor.name and scores["feature_dim"] == 2048
    assert (scores["n_real"], scores["n_fake"], scores["kid_subset_size"]) == (4, 3, 3)
    assert np.isfinite(scores["fid"]) and np.isfinite(scores["kid"])


def test_fidelity_scores_name_too_small_sets() -> None:
    extractor = EncoderExtractor(_encoder(), "toy")
    with pytest.raises(InvalidInput, match="n_real=0, n_fake=5"):
        fidelity_scores(torch.zeros(0, 1, 16, 16), torch.zeros(5, 1, 16, 16), extractor)
    with pytest.raises(InvalidInput, match="n_real=5, n_fake=1"):
        fidelity_scores(torch.zeros(5, 1, 16, 16), torch.zeros(1, 1, 16, 16), extractor)
    with pytest.raises(InvalidInput, match="fake must be floating point"):
        fidelity_scores(torch.zeros(5, 1, 16, 16), torch.zeros(5, 1, 16, 16, dtype=torch.uint8), extractor)


# --- real-versus-real baseline -----------------------------------------------------------------


def test_split_halves_by_patient_is_disjoint_balanced_and_seeded() -> None:
    patients = np.repeat([f"p{i}" for i in range(7)], [5, 3, 4, 6, 2, 5, 3])
    a, b, how = split_halves(len(patients), patients, seed=3)
    assert set(patients[a]).isdisjoint(patients[b])  # no patient in both halves
    assert sorted(np.concatenate([a, b]).tolist()) == list(range(len(patients)))  # every item once
    assert abs(len(a) - len(b)) <= 6 and how == f"by patient ({len(set(patients[a]))} | {len(set(patients[b]))} patients)"
    again = split_halves(len(patients), patients, seed=3)
    assert np.array_equal(again[0], a) and np.array_equal(again[1], b)
    assert any(not np.array_equal(split_halves(len(patients), patients, seed=s)[0], a) for s in range(4, 10))


def test_split_halves_falls_back_to_items_when_patients_do_not_allow() -> None:
    a, b, how = split_halves(9, ["p0"] * 9, seed=0)  # one patient: it cannot be in both halves
    assert how == "by item" and (len(a), len(b)) == (4, 5) and not set(a) & set(b)
    a, b, how = split_halves(5, ["p0", "p0", "p0", "p0", "p1"], seed=0)  # a half of 1 item
    assert how == "by item"
    assert split_halves(6, None)[2] == "by item"
    with pytest.raises(InvalidInput, match="at least 4 real images"):
        split_halves(3)
    with pytest.raises(InvalidInput, match="one group per item"):
        split_halves(6, ["a", "b"])


def test_real_baseline_scores_the_halves_like_cleanfid() -> None:
    rng = np.random.default_rng(11)
    f_real, f_fake = _features(rng, 48, 8), _features(rng, 30, 8, shift=2.0)
    patients = np.repeat([f"p{i}" for i in range(8)], 6)  # equal patients: halves of 24 and 24
    base = real_baseline(f_real, f_fake, groups=patients, seed=2, kid_subsets=1)
    a, b, how = split_halves(48, patients, seed=2)
    assert base["split"] == how and (base["n_a"], base["n_b"]) == (24, 24)
    rr, sr = base["real_vs_real"], base["synthetic_vs_real"]
    assert rr["fid"] == pytest.approx(cleanfid_fid.fid_from_feats(f_real[a], f_real[b]), rel=1e-8)
    # With one subset covering both sets the KID estimate is the full unbiased MMD (order-free).
    assert rr["kid"] == pytest.approx(cleanfid_fid.kernel_distance(f_real[a], f_real[b], num_subsets=1, max_subset_size=1000), rel=1e-9)
    assert (rr["n_real"], rr["n_fake"], sr["n_real"], sr["n_fake"]) == (24, 24, 24, 24)  # the synthetic score at the same counts
    # Shifted fakes are far from real; two real halves are close.
    assert sr["fid"] > 3 * rr["fid"] and sr["kid"] > 3 * rr["kid"]
    assert base == real_baseline(f_real, f_fake, groups=patients, seed=2, kid_subsets=1)


def test_real_baseline_with_fewer_fakes_than_half_b_uses_them_all() -> None:
    rng = np.random.default_rng(12)
    base = real_baseline(_features(rng, 20, 4), _features(rng, 3, 4), seed=0, kid_subsets=2)
    assert base["split"] == "by item" and base["synthetic_vs_real"]["n_fake"] == 3
    assert base["synthetic_vs_real"]["kid_subset_size"] == 3


def test_fidelity_from_features_equals_fidelity_scores() -> None:
    extractor = EncoderExtractor(_encoder(), "toy")
    real, fake = _smooth_images(12, 16, seed=20), _smooth_images(10, 16, seed=21)
    scores = fidelity_scores(real, fake, extractor, kid_subsets=5)
    direct = fidelity_from_features(extract_features(real, extractor), extract_features(fake, extractor), kid_subsets=5)
    assert {k: scores[k] for k in direct} == direct


# --- the held-out baseline ---------------------------------------------------------------------


def test_heldout_baseline_scores_held_out_against_training_at_equal_counts() -> None:
    """Held-out features differ from training ones by a known shift (d = 8, shift 1 a dimension: FID
    about 8); synthetic ones come from the training distribution (FID about 0). The baseline must show
    the held-out shift (the halves of the training data cannot: they score about 0), with n a side =
    min(held-out, synthetic) and both sets scored against all the training features."""
    rng = np.random.default_rng(21)
    d = 8
    f_train = rng.normal(size=(400, d))
    f_held = rng.normal(size=(150, d)) + 1.0
    f_fake = rng.normal(size=(90, d))
    base = heldout_baseline(f_train, f_held, f_fake, seed=4, kid_subsets=1)
    assert (base["n"], base["n_train"], base["n_heldout_available"], base["n_synthetic_available"]) == (90, 400, 150, 90)
    rr, sr = base["real_vs_real"], base["synthetic_vs_real"]
    assert (rr["n_real"], rr["n_fake"], sr["n_real"], sr["n_fake"]) == (400, 90, 400, 90)  # equal counts
    assert rr["fid"] == pytest.approx(d * 1.0, rel=0.3) and sr["fid"] < 1.0  # the held-out shift shows; training-like fakes do not
    halves = real_baseline(f_train, f_fake, seed=4, kid_subsets=1)["real_vs_real"]["fid"]
    assert halves < 1.0 < rr["fid"]  # two halves of the training data would have hidden it
    # exactly: the seeded draws of subsample_indices, through clean-fid's arithmetic
    held = f_held[subsample_indices(150, 90, seed=4, stream=1)]
    assert rr["fid"] == pytest.approx(cleanfid_fid.fid_from_feats(f_train, held), rel=1e-8)
    assert sr["fid"] == pytest.approx(cleanfid_fid.fid_from_feats(f_train, f_fake), rel=1e-8)  # all 90 fakes, in order
    assert base == heldout_baseline(f_train, f_held, f_fake, seed=4, kid_subsets=1)
    fewer_held = heldout_baseline(f_train, f_held[:30], f_fake, seed=4, kid_subsets=1)
    assert fewer_held["n"] == 30 and fewer_held["synthetic_vs_real"]["n_fake"] == 30 and fewer_held["real_vs_real"]["n_fake"] == 30


def test_heldout_baseline_refuses_too_few_images_rather_than_scoring_something_else() -> None:
    rng = np.random.default_rng(22)
    with pytest.raises(InvalidInput, match=r"n = min\(3 held-out real, 50 synthetic\) = 3"):
        heldout_baseline(rng.normal(size=(50, 4)), rng.normal(size=(3, 4)), rng.normal(size=(50, 4)))
    with pytest.raises(InvalidInput, match="feature dimensions differ"):
        heldout_baseline(rng.normal(size=(50, 4)), rng.normal(size=(9, 5)), rng.normal(size=(50, 4)))


def test_subsample_indices_are_seeded_sorted_and_all_when_asked_for_more() -> None:
    a = subsample_indices(100, 10, seed=3, stream=1)
    assert len(set(a)) == 10 and list(a) == sorted(a) and np.array_equal(a, subsample_indices(100, 10, seed=3, stream=1))
    assert not np.array_equal(a, subsample_indices(100, 10, seed=3, stream=2))
    assert list(subsample_indices(5, 9)) == list(subsample_indices(5, 5)) == [0, 1, 2, 3, 4]


# --- the Inception Score from the Inception file's class probabilities -------------------------


class _FakeInceptionWithClasses(_FakeInception):
    """With clean-fid's file's ImageNet output layer (2048 → 1008): class 0 and 1 read features 0 and 1
    with weight ln 3; every other class reads feature 2047 with weight -100; a bias that would make
    class 5 win if it were (wrongly) applied."""

    def __init__(self) -> None:
        super().__init__()
        self.output = torch.nn.Linear(2048, 1008)
        with torch.no_grad():
            self.output.weight.zero_()
            self.output.weight[0, 0] = self.output.weight[1, 1] = float(np.log(3.0))
            self.output.weight[2:, 2047] = -100.0
            self.output.bias.zero_()
            self.output.bias[5] = 50.0


@pytest.fixture(scope="module")
def fake_inception_with_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inception-classes") / INCEPTION_FILENAME
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(_FakeInceptionWithClasses().eval()), str(path))
    return path


def test_inception_score_from_the_files_logits_by_hand(fake_inception_with_classes: Path) -> None:
    """Features a = e0 + e2047, b = e1 + e2047: logits (ln 3, 0, -100, …) and (0, ln 3, -100, …), so
    p(y|a) = (3/4, 1/4, ~0…), p(y|b) = (1/4, 3/4, ~0…). A split holding a and b has p(y) = (1/2, 1/2)
    and KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 3/4 ln 3 - ln 2, so IS = 3^(3/4) / 2; a split of a, a has IS 1."""
    import hashlib

    extractor = InceptionExtractor(fake_inception_with_classes)
    assert extractor.has_classes
    a, b = np.zeros(2048), np.zeros(2048)
    a[[0, 2047]] = b[[1, 2047]] = 1.0
    probs = extractor.class_probabilities(np.stack([a, b]))
    assert probs.shape == (2, 1008)
    # (to float32 rounding of ln 3: the file stores float32 weights) and no bias: class 5 stays ~0
    np.testing.assert_allclose(probs[:, :2], [[0.75, 0.25], [0.25, 0.75]], rtol=1e-7)
    assert probs[:, 2:].max() < 1e-40
    mixed = 3 ** 0.75 / 2
    assert inception_score(probs, splits=1) == pytest.approx((mixed, 0.0), rel=1e-7, abs=1e-12)
    # the usual 10 splits, of 2 consecutive images: five (a, b) splits and five (a, a) ones
    feats = np.stack([a, b] * 5 + [a, a] * 5)
    mean, std = inception_score(extractor.class_probabilities(feats))
    assert (mean, std) == pytest.approx(((mixed + 1) / 2, (mixed - 1) / 2), rel=1e-7)
    assert extractor.recipe["sha256"] == hashlib.sha256(fake_inception_with_classes.read_bytes()).hexdigest()
    assert extractor.recipe["class_probabilities"] is True


def test_an_inception_file_without_its_output_layer_gives_no_class_probabilities(fake_inception_dir: Path) -> None:
    extractor = InceptionExtractor(fake_inception_dir)
    assert extractor.has_classes is False and extractor.recipe["class_probabilities"] is False
    with pytest.raises(InvalidInput, match="no `output` layer"):
        extractor.class_probabilities(np.zeros((2, 2048)))
