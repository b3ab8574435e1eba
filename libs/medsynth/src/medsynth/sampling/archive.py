"""Export a generator (any family) as a TorchServe model archive (``.mar``), and load it back.

The archive is portable: it holds no pickled code, only

* ``weights.pt`` — ``{net name: state_dict}`` of the family's sampling networks (EMA weights;
  ``torch.save``, loaded with ``weights_only=True``),
* ``generator.json`` — ``{"format", "spec": GeneratorSpec (family, options, training, data),
  "weights_sha256" (of the file), "weights_fingerprint" (of the tensors, see
  :func:`weights_fingerprint`), "torchscript": {mask source: file}, ...}``,
* ``sampler-<mask source>.torchscript.pt`` — each sampling mode traced with :func:`torch.jit.trace`:
  ``(noise tensors, condition) → (N, 1 + C, S, S)``, loadable by any TorchScript runtime without
  medsynth (the noise rule is in the cohort manifest),
* the handler ``services/sampler/handler.py`` (archived as :data:`HANDLER_MODULE` ``.py``), which
  rebuilds the networks from medsynth code through the family registry. medsynth must therefore be
  installed in the Python environment TorchServe's workers run in.

:func:`load_exported` is the inverse the handler calls on the unpacked archive directory; it also
reads format-1 exports (medsynth's first joint GAN: one generator ``state_dict`` + its config).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from medsynth.core.errors import Conflict, InvalidInput, MedsynthError, NotFound
from medsynth.generators.base import DataSpec, SampleMode, SamplingNet
from medsynth.generators.registry import GeneratorSpec, parse_options, parse_training
from medsynth.generators.checkpoint import StateDict, build_sampling_nets

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "generator.json"
EXPORT_FORMAT = "medsynth/generator-export/v2"
EXPORT_FORMAT_V1 = "medsynth/generator-export/v1"
# The handler's module name inside the archive: unique, so no installed module can shadow it.
HANDLER_MODULE = "medsynth_sampler_handler"
# TorchServe's own rule for model names (model-archiver rejects anything else); versions likewise.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")
_ARCHIVER_TIMEOUT_S = 120


def default_handler_path() -> Path:
    """``services/sampler/handler.py`` of the source checkout medsynth is installed from (editable);
    an installed medsynth is told where the handler is (``Settings.sampler_handler``: the images'
    ``MEDSYNTH_SAMPLER_HANDLER``)."""
    return Path(__file__).resolve().parents[5] / "services" / "sampler" / "handler.py"


def build_model_archive(
    spec: GeneratorSpec,
    weights: Mapping[str, StateDict],
    *,
    model_name: str,
    version: str,
    out_dir: Path,
    handler: Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``<out_dir>/<model_name>.mar`` and return its path.

    ``weights`` are the sampling networks' state dicts by name (:meth:`Checkpoint.sampling_weights`);
    they must load into ``spec``'s networks strictly (checked here, so a broken archive is never
    written). The archive appears atomically (built aside, then renamed). Raises :class:`InvalidInput`
    for a bad name, version or weights, :class:`Conflict` if the archive exists and not ``overwrite``.
    """
    check_model_name(model_name)
    check_model_name(version, "model version")
    nets = build_sampling_nets(spec, weights)
    handler_path = Path(handler) if handler is not None else default_handler_path()
    if not handler_path.is_file():
        raise NotFound(f"sampler handler not found at {str(handler_path)!r} (pass handler=...).")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{model_name}.mar"
    if target.exists() and not overwrite:
        raise Conflict(f"model archive {str(target)!r} already exists (pass overwrite=True to replace it).")

    with tempfile.TemporaryDirectory(prefix="medsynth-mar-") as tmp:
        work = Path(tmp)
        inputs = _write_inputs(work / "in", spec, nets, model_name=model_name, version=version, handler=handler_path)
        staged = Path(tempfile.mkdtemp(prefix=".mar-", dir=out_dir))
        try:
            _run_archiver(inputs, model_name=model_name, version=version, export_dir=staged, tmpdir=work / "tmp")
            os.replace(staged / f"{model_name}.mar", target)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    log.info("wrote model archive %s (%d bytes)", target, target.stat().st_size)
    return target


def trace_sampling_net(net: SamplingNet) -> torch.jit.ScriptModule:
    """``net`` traced with :func:`torch.jit.trace` on a two-sample example on its device: a TorchScript
    module ``(noise list, condition) → (N, 1 + C, S, S)`` that needs no medsynth to run. The trace holds
    no constant of the device it was made on (:class:`~medsynth.generators.base.SamplingNet`), so a CPU
    trace runs on a GPU once loaded with ``torch.jit.load(path, map_location="cuda")``."""
    device = next(iter(net.parameters()), torch.empty(0)).device
    example = [torch.zeros(2, *shape, device=device) for shape in net.noise_shapes]
    with torch.no_grad(), net.tracing():
        return torch.jit.trace(net, (example, torch.zeros(2, dtype=torch.int64, device=device)), check_trace=False)


def weights_fingerprint(weights: Mapping[str, StateDict]) -> str:
    """SHA-256 over the sampling weights' content (sorted net and tensor names, dtypes, shapes, raw
    bytes), independent of how they were serialised: the same weights give the same fingerprint in
    every process."""
    digest = hashlib.sha256()
    for net in sorted(weights):
        for name in sorted(weights[net]):
            tensor = weights[net][name].detach().cpu().contiguous()
            digest.update(f"{net}/{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def net_weights(nets: Mapping[str, torch.nn.Module]) -> dict[str, StateDict]:
    return {name: net.state_dict() for name, net in nets.items()}


def load_exported(model_dir: str | Path, device: torch.device | str = "cpu") -> tuple[GeneratorSpec, dict[str, torch.nn.Module], dict[str, Any]]:
    """The spec, the sampling networks (eval mode, on ``device``) and the ``generator.json`` record of
    an unpacked archive directory. Checks the format and the weights' SHA-256."""
    model_dir = Path(model_dir)
    meta = _read_meta(model_dir / CONFIG_FILE)
    raw = _read_file(model_dir / WEIGHTS_FILE)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != meta["weights_sha256"]:
        raise InvalidInput(
            f"{model_dir / WEIGHTS_FILE} has SHA-256 {digest}, but {CONFIG_FILE} records {meta['weights_sha256']}."
        )
    weights = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    if meta["format"] == EXPORT_FORMAT_V1:
        spec, weights = _spec_from_v1_export(meta["config"]), {"generator": weights}
    else:
        spec = GeneratorSpec.from_dict(meta["spec"])
    return spec, build_sampling_nets(spec, weights, device=device), meta


def _spec_from_v1_export(config: Mapping[str, Any]) -> GeneratorSpec:
    """A format-1 export's GeneratorConfig fields as a joint-gan spec (training options unknown: minimal)."""
    options = parse_options({"family": "joint-gan", "latent_dim": config["latent_dim"], "base_channels": config["base_channels"],
                             "critic_norm": "batch", "fake_masks": "softmax"})
    return GeneratorSpec(options=options, training=parse_training({"steps": 1}),
                         data=DataSpec(config["image_size"], config["num_classes"]))


# --- helpers ---------------------------------------------------------------------------------------


def check_model_name(value: object, what: str = "model name") -> str:
    """``value`` if TorchServe accepts it as a model name (or version), else :class:`InvalidInput`."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise InvalidInput(f"{what} must match {_NAME_RE.pattern} (TorchServe's rule), got {value!r}.")
    return value


def _write_inputs(directory: Path, spec: GeneratorSpec, nets: Mapping[str, torch.nn.Module], *, model_name: str, version: str, handler: Path) -> dict[str, Path]:
    directory.mkdir(parents=True)
    weights = {name: {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()} for name, net in nets.items()}
    buf = io.BytesIO()
    torch.save(weights, buf)
    weights_bytes = buf.getvalue()
    family = spec.family
    traced: dict[str, str] = {}
    extra: list[Path] = []
    condition = 0 if family.conditional(spec.options) else None  # traced nets take the condition as an input
    for source in family.mask_sources_for(spec.options):
        name = f"sampler-{source.value}.torchscript.pt"
        net = family.sampling_net(spec.options, spec.data, nets, SampleMode(mask_source=source, condition=condition))
        trace_sampling_net(net).save(str(directory / name))
        traced[source.value] = name
        extra.append(directory / name)
    meta = {
        "format": EXPORT_FORMAT,
        "spec": spec.to_dict(),
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": hashlib.sha256(weights_bytes).hexdigest(),
        "weights_fingerprint": weights_fingerprint(weights),
        "torchscript": traced,
        "model_name": model_name,
        "version": version,
        "torch": torch.__version__,
    }
    paths = {
        "weights": directory / WEIGHTS_FILE,
        "config": directory / CONFIG_FILE,
        "handler": directory / f"{HANDLER_MODULE}.py",
        "extra": extra,
    }
    paths["weights"].write_bytes(weights_bytes)
    paths["config"].write_text(json.dumps(meta, indent=2, sort_keys=True))
    shutil.copyfile(handler, paths["handler"])
    return paths


def _run_archiver(inputs: dict[str, Any], *, model_name: str, version: str, export_dir: Path, tmpdir: Path) -> None:
    """Run torch-model-archiver in a child process. Its own TMPDIR matters: the archiver stages files
    in ``$TMPDIR/<model_name>`` and deletes that directory first, so two concurrent builds of one
    model name sharing /tmp would clobber each other."""
    tmpdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "model_archiver.model_packaging",
        "--model-name", model_name,
        "--version", version,
        "--handler", str(inputs["handler"]),
        "--serialized-file", str(inputs["weights"]),
        "--extra-files", ",".join(str(p) for p in [inputs["config"], *inputs["extra"]]),
        "--export-path", str(export_dir),
    ]  # fmt: skip
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=_ARCHIVER_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MedsynthError(f"torch-model-archiver could not run ({' '.join(cmd[:3])}): {exc}") from exc
    if proc.returncode != 0 or not (export_dir / f"{model_name}.mar").is_file():
        output = (proc.stderr or proc.stdout).strip()[-2000:]
        raise MedsynthError(f"torch-model-archiver failed for model {model_name!r} (exit {proc.returncode}): {output}")


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"exported generator file {str(path)!r} is missing.") from None


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(_read_file(path))
    except ValueError as exc:
        raise InvalidInput(f"{str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") not in (EXPORT_FORMAT, EXPORT_FORMAT_V1):
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise InvalidInput(f"{str(path)!r} is not a {EXPORT_FORMAT!r} record (format {found!r}).")
    spec_field = "config" if meta["format"] == EXPORT_FORMAT_V1 else "spec"
    if not isinstance(meta.get(spec_field), dict) or not isinstance(meta.get("weights_sha256"), str):
        raise InvalidInput(f"{str(path)!r} lacks {spec_field!r} or 'weights_sha256'.")
    return meta
