"""``make bench-fid``: feature extraction and FID for 10,000 images a side, medsynth beside clean-fid
in one run, on the same PNG files through the same feature extractor.

The images are grey 64 x 64 PNGs the bench writes itself (smooth random textures with bright
ellipses; the "synthetic" side drawn with other parameters). The extractor is a seeded MONAI U-Net
encoder as medsynth's in-domain FID uses (no Inception weights ship here); clean-fid gets it as its
``custom_feat_extractor`` with resizing switched off, so both compute features of identical pixels.
Each side reads the files, extracts features and computes FID; the table gives both times, their
ratio and both scores (which should agree to float precision). Rounds alternate the two so that a
busy machine slows both alike. Writes ``results.json`` and ``results.md`` under ``--out``.

clean-fid is a reference tool, pinned in requirements-tools.lock (``make install`` installs it), not in
the services' requirements.lock: it is imported only when its side of the bench runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsynth.bench import save_results
from medsynth.core.errors import MedsynthError

SIZE = 64


def write_images(folder: Path, n: int, seed: int, *, shift: float = 0.0) -> None:
    """``n`` grey PNGs: low-pass noise plus one to three ellipses (``shift`` moves the brightness)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    for i in range(n):
        noise = rng.normal(0, 1, (SIZE // 8, SIZE // 8))
        base = np.kron(noise, np.ones((8, 8))) * 0.08 + 0.3 + shift
        for _ in range(rng.integers(1, 4)):
            cy, cx, ry, rx = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.2), rng.uniform(0.05, 0.2)
            base = base + 0.4 * (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1)
        Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8)).save(folder / f"{i:05d}.png")


def build_encoder(seed: int) -> torch.nn.Module:
    from medsynth.segmentation.config import SegmentationSpec
    from medsynth.segmentation.models import build_model, encoder

    torch.manual_seed(seed)
    return encoder(build_model(SegmentationSpec(num_classes=2))).eval()


def medsynth_fid(real_dir: Path, fake_dir: Path, net: torch.nn.Module, batch_size: int) -> tuple[float, float]:
    """medsynth's path: PNGs to [0,1] tensors, EncoderExtractor features, frechet_distance_from_features."""
    from PIL import Image

    from medsynth.metrics.fidelity import EncoderExtractor, extract_features, frechet_distance_from_features

    began = time.perf_counter()
    extractor = EncoderExtractor(net, "bench encoder")

    def load(folder: Path) -> torch.Tensor:
        arrays = [np.asarray(Image.open(p), dtype=np.float32) / 255.0 for p in sorted(folder.glob("*.png"))]
        return torch.from_numpy(np.stack(arrays)[:, None])

    real = extract_features(load(real_dir), extractor, batch_size=batch_size)
    fake = extract_features(load(fake_dir), extractor, batch_size=batch_size)
    return frechet_distance_from_features(real, fake), time.perf_counter() - began


class _CleanFidInput(torch.nn.Module):
    """clean-fid hands a custom extractor (N, 3, H, W) in [0, 255]; the encoder takes (N, 1, H, W) in [0, 1]."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x[:, :1] / 255.0)
        out = out[-1] if isinstance(out, (list, tuple)) else out
        return out.mean(dim=tuple(range(2, out.ndim))) if out.ndim > 2 else out


def import_cleanfid() -> Any:
    """``cleanfid.fid``, or an error naming the package and where it comes from (the tools lock)."""
    try:
        from cleanfid import fid
    except ImportError as exc:
        raise MedsynthError(f"the FID benchmark compares against clean-fid, which is not installed ({exc}); it is pinned "
                            "in requirements-tools.lock: `make install` (both locks) installs it") from None
    return fid


def cleanfid_fid(real_dir: Path, fake_dir: Path, net: torch.nn.Module, batch_size: int, workers: int) -> tuple[float, float]:
    """clean-fid's own path on the same files: its dataset and loader, its feature loop, its FID."""
    fid = import_cleanfid()

    began = time.perf_counter()
    model = _CleanFidInput(net).eval()
    options = {"model": model, "num_workers": workers, "batch_size": batch_size, "device": torch.device("cpu"), "mode": "clean",
               "custom_fn_resize": lambda x: x, "verbose": False}
    real = fid.get_folder_features(str(real_dir), **options)
    fake = fid.get_folder_features(str(fake_dir), **options)
    return float(fid.fid_from_feats(real, fake)), time.perf_counter() - began


def run(n: int, rounds: int, batch_size: int, workers: int, seed: int, work: Path) -> dict[str, Any]:
    real_dir, fake_dir = work / "real", work / "synthetic"
    began = time.perf_counter()
    write_images(real_dir, n, seed)
    write_images(fake_dir, n, seed + 1, shift=0.05)
    write_s = time.perf_counter() - began
    torch.set_num_threads(max(1, torch.get_num_threads()))
    net = build_encoder(seed)
    rows = []
    for r in range(rounds):
        order = ("medsynth", "clean-fid") if r % 2 == 0 else ("clean-fid", "medsynth")
        row: dict[str, Any] = {"round": r + 1}
        for who in order:
            score, seconds = (medsynth_fid(real_dir, fake_dir, net, batch_size) if who == "medsynth"
                              else cleanfid_fid(real_dir, fake_dir, net, batch_size, workers))
            row[who] = {"fid": score, "seconds": seconds}
        row["ratio"] = row["medsynth"]["seconds"] / row["clean-fid"]["seconds"]
        row["relative_difference"] = abs(row["medsynth"]["fid"] - row["clean-fid"]["fid"]) / max(abs(row["clean-fid"]["fid"]), 1e-12)
        rows.append(row)
        print(f"round {r + 1}: medsynth {row['medsynth']['seconds']:.1f} s, clean-fid {row['clean-fid']['seconds']:.1f} s; "
              f"FID {row['medsynth']['fid']:.6f} / {row['clean-fid']['fid']:.6f}", flush=True)
    return {"images_per_side": n, "image_size": SIZE, "batch_size": batch_size, "cleanfid_workers": workers, "threads": torch.get_num_threads(),
            "extractor": "seeded MONAI U-Net encoder (medsynth in-domain extractor, untrained)", "write_s": write_s, "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# bench-fid — {result['images_per_side']} images a side ({result['image_size']}², grey PNG), batch "
             f"{result['batch_size']}, {result['threads']} torch threads, clean-fid with {result['cleanfid_workers']} loader workers", "",
             "| round | medsynth s | clean-fid s | time ratio medsynth / clean-fid | FID medsynth | FID clean-fid | relative difference |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['round']} | {r['medsynth']['seconds']:.1f} | {r['clean-fid']['seconds']:.1f} | {r['ratio']:.2f} | "
                     f"{r['medsynth']['fid']:.6f} | {r['clean-fid']['fid']:.6f} | {r['relative_difference']:.1e} |")
    ratios = sorted(r["ratio"] for r in result["rows"])
    lines += ["", f"median time ratio {ratios[len(ratios) // 2]:.2f} (below 1: medsynth faster)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medsynth-bench-fid", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000, help="images a side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="clean-fid's data-loader workers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-results/fid"))
    args = parser.parse_args(argv)
    if args.images < 10 or args.rounds < 1:
        print("bench-fid: --images must be at least 10 and --rounds at least 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="medsynth-bench-fid-") as work:
        result = run(args.images, args.rounds, args.batch_size, args.workers, args.seed, Path(work))
    save_results(args.out, result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
