"""Options of each family sized for one CPU machine at 64×64 — what ``make demo`` and
``make bench-generators`` train, so that both say (and record) exactly what was run.

Each preset is the request body's ``generator`` and ``training`` parts (``training`` without the
steps/time budget, which the caller sets).
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "joint-gan": {
        "generator": {"family": "joint-gan", "loss": "hinge", "base_channels": 32, "diff_augment": True},
        "training": {"batch_size": 32},
    },
    "spade": {
        "generator": {"family": "spade"},
        "training": {"batch_size": 16},
    },
    "stylegan2": {
        "generator": {"family": "stylegan2", "augment": "ada"},
        "training": {"batch_size": 16},
    },
}


def preset(family: str) -> dict[str, dict[str, Any]]:
    """A copy of ``family``'s preset; :class:`KeyError` naming the known ones otherwise."""
    if family not in PRESETS:
        raise KeyError(f"no preset for family {family!r}; presets exist for {sorted(PRESETS)}")
    return {part: dict(values) for part, values in PRESETS[family].items()}
