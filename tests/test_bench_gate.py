"""make bench-gate on a small phantom view: exact and flipped copies are all flagged, held-out
patients are not, and the table names every kind."""

from __future__ import annotations

from pathlib import Path

from medsynth.bench.gate import NOISE, SHIFTS, markdown, run
from medsynth.store.local import LocalStore

from pipeline_fixtures import phantom_view


def test_the_gate_bench_on_phantoms(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    view_id = phantom_view(store, tmp_path, n=8)
    result = run(store, "ph", view_id, count=10, seed=0)
    by_kind = {r["kind"]: r for r in result["rows"]}
    assert len(by_kind) == 3 + len(NOISE) + len(SHIFTS) + 1
    for kind in ("exact", "hflip", "vflip"):
        assert by_kind[kind]["flagged"] == by_kind[kind]["n"] > 0, kind
    assert by_kind["held-out real (other patients)"]["flagged"] == 0
    table = markdown(result)
    assert "| exact |" in table and "noise σ=0.01" in table and "shift 1 px" in table
