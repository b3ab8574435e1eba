"""Cohort sampling: draw (image, mask) pairs from a trained generator, reproducibly.

* :mod:`~medsynth.sampling.generate` — the core: per-sample latent seeds and :func:`generate`, which
  both the TorchServe handler and the in-process path call.
* :mod:`~medsynth.sampling.archive` — export a generator (state_dict + config JSON) as a TorchServe
  ``.mar`` whose handler is ``services/sampler/handler.py``.
* :mod:`~medsynth.sampling.torchserve` — run TorchServe as a child process and talk to it.
* :mod:`~medsynth.sampling.backends` — one :class:`~medsynth.sampling.backends.Sampler` interface,
  two implementations (TorchServe, in-process).
* :mod:`~medsynth.sampling.cohort` — write a cohort (NIfTI pairs, contact sheet, manifest) to a
  store, and regenerate any of its samples bit for bit from the manifest.

Nothing is re-exported here so that the TorchServe worker, which imports only ``generate`` and
``archive``, does not pay for Pillow, nibabel or httpx.
"""
