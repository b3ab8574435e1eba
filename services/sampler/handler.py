"""TorchServe handler of the medsynth sampler: draws (image, mask) samples from an exported generator
of any family.

Packaged into the ``.mar`` by :func:`medsynth.sampling.archive.build_model_archive` (as
``medsynth_sampler_handler.py``). It holds no model code: :func:`medsynth.sampling.archive.load_exported`
rebuilds the networks from ``generator.json`` + ``weights.pt`` through the family registry, the
family builds the sampling net of the requested mode, and every sample is computed by
:func:`medsynth.sampling.generate.generate` — the same function the in-process path calls.

Request body (JSON), one of::

    {"seed": 7, "start": 0, "count": 16}       samples 0..15 of seed 7, in one generator pass
    {"seed": 7, "indices": [3, 9]}             those samples, in one generator pass
    {"describe": true}                         the generator spec, the mode and the worker's software

Every request may add the sampling mode: ``"mask_source"`` (``generated`` by default, or
``real-deformed`` for families that have it) and ``"condition"`` (a class label, for class-conditioned
generators), and for iterative samplers (diffusion) ``"sample_steps"`` and ``"eta"``. A mode the
generator cannot serve answers 400 naming why.

Sampling answers ``application/x-npz``: an uncompressed ``.npz`` with ``images`` (N, 1, S, S)
float32 in [0, 1], ``masks`` (N, S, S) uint8, ``indices`` (N,) int64 and ``seed`` () int64 — exact
bits, no text round trip. ``describe`` answers JSON. A bad request answers 400 with
``{"error": message}``; anything else that fails becomes TorchServe's 503.

TorchServe loads the one class defined in this module, so helpers here are functions.
"""

from __future__ import annotations

import io
import json
import logging
import os
from typing import Any

import numpy as np
import torch

from medsynth.core.devices import check_device, pick_device
from medsynth.core.errors import InvalidInput
from medsynth.generators.base import MaskSource, SampleMode, SamplingNet
from medsynth.sampling.archive import load_exported, net_weights, weights_fingerprint
from medsynth.sampling.generate import (
    LATENT_SCHEME,
    MAX_BATCH,
    check_indices,
    check_seed,
    configure_determinism,
    generate,
    runtime_info,
)

log = logging.getLogger(__name__)

NPZ_CONTENT_TYPE = "application/x-npz"
JSON_CONTENT_TYPE = "application/json"


class SamplerHandler:
    """``initialize(context)`` once per worker, then ``handle(batch, context)`` per request batch."""

    def __init__(self) -> None:
        self.spec = None
        self.nets: dict[str, Any] = {}
        self.samplers: dict[SampleMode, SamplingNet] = {}
        self.meta: dict[str, Any] = {}
        self.fingerprint = ""
        self.device = torch.device("cpu")
        self.initialized = False

    def initialize(self, context: Any) -> None:
        configure_determinism()
        props = context.system_properties
        self.device = worker_device(props.get("gpu_id"), os.environ.get("MEDSYNTH_DEVICE", "auto"))
        self.spec, self.nets, self.meta = load_exported(props["model_dir"], self.device)
        self.fingerprint = weights_fingerprint(net_weights(self.nets))
        self.initialized = True
        log.info("medsynth sampler loaded %s (%s) on %s", props["model_dir"], self.spec.options.family, self.device)

    def handle(self, batch: list[dict[str, Any]], context: Any) -> list[Any]:
        return [self._one(row, idx, context) for idx, row in enumerate(batch)]

    def _one(self, row: dict[str, Any], idx: int, context: Any) -> Any:
        try:
            request = _parse(row)
            mode = _mode(request)
            net = self._sampler(mode)
            if request.get("describe") is True:
                context.set_response_content_type(idx, JSON_CONTENT_TYPE)
                return self._describe(mode, net)
            seed, indices = _sample_request(request)
            images, masks = generate(net, seed, indices, mode.condition)
        except InvalidInput as exc:
            log.warning("bad sampler request: %s", exc)
            context.set_response_status(400, "Bad Request", idx)
            context.set_response_content_type(idx, JSON_CONTENT_TYPE)
            return json.dumps({"error": str(exc)})
        context.set_response_content_type(idx, NPZ_CONTENT_TYPE)
        return _npz(images, masks, indices, seed)

    def _sampler(self, mode: SampleMode) -> SamplingNet:
        if mode not in self.samplers:
            self.samplers[mode] = self.spec.family.sampling_net(self.spec.options, self.spec.data, self.nets, mode).eval()
        return self.samplers[mode]

    def _describe(self, mode: SampleMode, net: SamplingNet) -> str:
        return json.dumps(
            {
                "generator": self.spec.to_dict(),
                "mode": mode.to_dict(),
                "noise_shapes": [list(s) for s in net.noise_shapes],
                "weights_sha256": self.meta["weights_sha256"],
                "weights_fingerprint": self.fingerprint,
                "model_name": self.meta.get("model_name"),
                "version": self.meta.get("version"),
                "latent_scheme": LATENT_SCHEME,
                "software": runtime_info(self.device),
            }
        )


def worker_device(gpu_id: Any, wanted: str = "auto") -> torch.device:
    """The device of a TorchServe worker: the GPU TorchServe assigned it (``gpu_id``), as the
    ``MEDSYNTH_DEVICE`` of TorchServe's environment allows (:mod:`medsynth.core.devices`).

    * ``cpu``: the CPU, whatever TorchServe assigned;
    * ``cuda`` (the chart's GPU pool): the assigned GPU; no ``gpu_id`` (TorchServe found no GPU, or
      ``number_of_gpu=0``) or a GPU torch cannot use is an error — the worker does not start;
    * ``auto``: the assigned GPU, or the CPU when TorchServe assigned none; an assigned GPU that torch
      cannot use is an error too, never a silent CPU worker.
    """
    wanted = check_device(wanted)
    if wanted == "cpu":
        return torch.device("cpu")
    if gpu_id is None:
        if wanted == "auto":
            return torch.device("cpu")
        raise InvalidInput(
            f"MEDSYNTH_DEVICE={wanted} but TorchServe assigned this worker no GPU (no gpu_id: it found no GPU, or "
            "number_of_gpu is 0); refusing to sample on the CPU instead."
        )
    return pick_device(f"cuda:{int(gpu_id)}")


def _parse(row: dict[str, Any]) -> dict[str, Any]:
    """The request body as a dict: TorchServe hands it over already JSON-decoded (content type
    application/json), as text, or as raw bytes, under ``data`` or ``body``."""
    body = row.get("data") if row.get("data") is not None else row.get("body")
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError as exc:
            raise InvalidInput(f"request body must be JSON, got {body[:80]!r} ({exc}).") from None
    if not isinstance(body, dict):
        raise InvalidInput(f"request body must be a JSON object, got {type(body).__name__}.")
    return body


def _mode(request: dict[str, Any]) -> SampleMode:
    source, condition = request.get("mask_source", MaskSource.generated.value), request.get("condition")
    try:
        mask_source = MaskSource(source)
    except ValueError:
        raise InvalidInput(f"mask_source must be one of {[s.value for s in MaskSource]}, got {source!r}.") from None
    if condition is not None and not _is_int(condition):
        raise InvalidInput(f"condition must be an integer class label or null, got {condition!r}.")
    steps, eta = request.get("sample_steps"), request.get("eta")
    if steps is not None and not _is_int(steps):
        raise InvalidInput(f"sample_steps must be an integer or null, got {steps!r}.")
    if eta is not None and (isinstance(eta, bool) or not isinstance(eta, (int, float))):
        raise InvalidInput(f"eta must be a number or null, got {eta!r}.")
    return SampleMode(mask_source=mask_source, condition=condition, sample_steps=steps,
                      eta=None if eta is None else float(eta))


def _sample_request(request: dict[str, Any]) -> tuple[int, list[int]]:
    if "seed" not in request:
        raise InvalidInput(f"request must name a 'seed', got keys {sorted(request)}.")
    seed = check_seed(request["seed"])
    if "indices" in request:
        return seed, check_indices(request["indices"])
    start, count = request.get("start"), request.get("count")
    if not _is_int(start) or not _is_int(count) or start < 0 or not 1 <= count <= MAX_BATCH:
        raise InvalidInput(
            f"request needs 'indices', or 'start' >= 0 and 'count' in 1..{MAX_BATCH}; got start={start!r} count={count!r}."
        )
    return seed, check_indices(range(start, start + count))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _npz(images: np.ndarray, masks: np.ndarray, indices: list[int], seed: int) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, images=images, masks=masks, indices=np.asarray(indices, dtype=np.int64), seed=np.int64(seed))
    return buf.getvalue()
