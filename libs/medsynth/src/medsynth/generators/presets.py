"""Options of each family sized for one CPU machine at 64×64 — what ``make demo`` and
``make bench-generators`` train, so that both say (and record) exactly what was run.

Each preset (named after its family, or ``<family>-<variant>`` for a family's other variants) is the
request body's ``generator`` and ``training`` parts (``training`` without the steps/time budget, which
the caller sets) and the ``cohort`` request's mask source that scored best in ``make bench-generators``
(hippocampus, 8 minutes per family; see the README).
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
    # Not benchmarked yet either. Two CPU threads at 64², batch 16: the pixel denoiser takes ~0.55 s a
    # step, the autoencoder ~0.3 s and the 16×16-latent denoiser ~0.09 s, so 600 autoencoder steps
    # leave ~3000 denoiser steps of an 8-minute budget.
    "diffusion-latent": {
        "generator": {"family": "diffusion", "latent": True, "autoencoder_steps": 600},
        "training": {"batch_size": 16},
        "cohort": {"mask_source": "generated"},
    },
    # Two denoisers per step (~1.2 s at batch 16): batch 8 for more steps in the budget; masks as SPADE's best.
    "diffusion-mask-conditioned": {
        "generator": {"family": "diffusion", "variant": "mask-conditioned"},
        "training": {"batch_size": 8},
        "cohort": {"mask_source": "real-deformed"},
    },
}


def preset(family: str) -> dict[str, dict[str, Any]]:
    """A copy of ``family``'s preset; :class:`InvalidInput` naming the known ones otherwise."""
    if family not in PRESETS:
        raise InvalidInput(f"no preset for family {family!r}; presets exist for {sorted(PRESETS)}")
    return {part: dict(values) for part, values in PRESETS[family].items()}
