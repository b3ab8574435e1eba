"""`make bench-load`'s pieces that need no stack: its scans are distinct valid NIfTI pairs, and its
table reports what the phases measured."""

from __future__ import annotations

import hashlib

from medsynth.bench.load import percentiles, scan_bytes, table
from medsynth.io.nifti import validate_scan


def test_bench_scans_are_distinct_valid_pairs() -> None:
    pairs = [scan_bytes(i) for i in range(5)]
    assert len({hashlib.sha256(image).hexdigest() for image, _ in pairs}) == 5
    scan = validate_scan(*pairs[3], max_voxels=10**6)
    assert scan.shape == (16, 16, 4) and set(scan.label_values) <= {0, 1}


def test_percentiles_and_table() -> None:
    p = percentiles([0.1] * 18 + [1.0, 2.0])  # numpy's linear interpolation: p95 between 1.0 and 2.0 s
    assert p["p50_ms"] == 100.0 and abs(p["p95_ms"] - 1050.0) < 1e-6
    window = {"uploads": 1000, "scans_per_s": 40.0, "p50_ms": 120.0, "p95_ms": 300.0}
    results = {"cpu_count": 2,
               "ingest": {"scans": 2000, "clients": 50, "wall_s": 50.0, "accepted": 2000, "errors": {}, "manifest_scans": 2000, "lost": 0,
                          "first_window": window, "last_window": window | {"scans_per_s": 38.0}},
               "cohorts": {"clients": 20, "seconds": 60.0, "requested": 400, "post": {"p50_ms": 30.0, "p95_ms": 90.0}, "errors": {},
                           "end_to_end": {"p50_ms": 2500.0, "p95_ms": 6000.0}, "outcomes": {"succeeded": 400}, "unfinished": 0}}
    text = table(results)
    assert "| first 1000 | 40.0 | 120 | 300 |" in text and "| last 1000 | 38.0 |" in text
    assert "400 requested" in text and "after the burst 0" in text and "p50 2.5 s, p95 6.0 s" in text
