"""Options of each family sized for one CPU machine at 64×64 — what ``make demo`` and
``make bench-generators`` train, so that both say (and record) exactly what was run.

Each preset is the request body's ``generator`` and ``training`` parts (``training`` without the
steps/time budget, which the caller sets) and the ``cohort`` request's mask source that scored best
in ``make bench-generators`` (hippocampus, 8 minutes per family; see the README).
"""

from __future__ import annotations

from typing import Any

from medsynth.core.errors import InvalidInput

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "joint-gan": {
        "generator": {"family": "joint-gan", "loss": "hinge", "base_channels": 32, "diff_augment": True},
        "training": {"batch_size": 32},
        "cohort": {"mask_source": "generated"},
    },
    "spade": {
        "generator": {"family": "spade"},
        "training": {"batch_size": 16},
        "cohort": {"mask_source": "real-deformed"},
    },
    "stylegan2": {
        "generator": {"family": "stylegan2", "augment": "ada"},
        "training": {"batch_size": 16},
        "cohort": {"mask_source": "generated"},
    },
    "diffusion": {  # not benchmarked yet: `make bench-generators ARGS="--families diffusion"`
        "generator": {"family": "diffusion"},
        "training": {"batch_size": 16},
        "cohort": {"mask_source": "generated"},
    },
}


def preset(family: str) -> dict[str, dict[str, Any]]:
    """A copy of ``family``'s preset; :class:`InvalidInput` naming the known ones otherwise."""
    if family not in PRESETS:
        raise InvalidInput(f"no preset for family {family!r}; presets exist for {sorted(PRESETS)}")
    return {part: dict(values) for part, values in PRESETS[family].items()}
