"""Benchmarks: measured speed and quality on real or phantom data (`make bench-*`), never part of `make test`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def save_results(out: Path | str, result: Any, markdown: str) -> None:
    """Every bench's output: ``results.json`` (all numbers) and ``results.md`` (its table) under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "results.md").write_text(markdown.rstrip("\n") + "\n")
