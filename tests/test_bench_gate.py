"""make bench-gate on a small phantom view: every disguise the bench plants has its row; exact,
flipped, shifted, rotated, rescaled and re-toned copies are all flagged, held-out patients are not,
and the table names every kind.

Phantom slices are 32 px, where a 4-px shift, a sub-pixel shift or a crop leaves little to compare
(the module says so), so those rows are held to 8 of 10 here; the real-data figures are the bench's."""

from __future__ import annotations

from pathlib import Path

from medsynth.bench.gate import DISGUISES, MASK_DISGUISES, markdown, run
from medsynth.store.local import LocalStore

from pipeline_fixtures import phantom_view

SMALL_IMAGE_ROWS = ("shift 4 px", "shift 2.5 px (bilinear)", "crop ≥90% + resize")


def test_the_gate_bench_on_phantoms(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    view_id = phantom_view(store, tmp_path, n=8)
    result = run(store, "ph", view_id, count=10, seed=0, echo=lambda *_: None)
    by_kind = {r["kind"]: r for r in result["rows"]}
    held_out = next(k for k in by_kind if k.startswith("held-out real"))
    assert set(by_kind) == {*DISGUISES, *(f"mask {k}" for k in MASK_DISGUISES), "mask real-deformed (default deformation)", held_out}
    for kind in DISGUISES:
        row = by_kind[kind]
        wanted = 8 if kind in SMALL_IMAGE_ROWS else row["n"]
        assert row["n"] == 10 and row["flagged"] >= wanted, (kind, row)
    assert by_kind[held_out]["flagged"] == 0 and by_kind[held_out]["n"] > 0
    for kind in ("mask exact", "mask hflip", "mask shift 4 px"):  # a training mask beside a held-out image, moved by whole pixels
        row = by_kind[kind]
        assert row["masks_audited"] > 0 and row["mask_flagged"] == row["masks_audited"], (kind, row)
    table = markdown(result)
    assert "| exact |" in table and "noise σ=0.01" in table and "shift 1 px" in table and "rotate ±10°" in table
