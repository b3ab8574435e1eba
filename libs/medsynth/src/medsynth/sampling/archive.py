"""Export a generator as a TorchServe model archive (``.mar``), and load it back.

The archive is portable and small: it holds no pickled code and no TorchScript, only

* ``weights.pt`` — the generator's ``state_dict`` (``torch.save``; loaded with ``weights_only=True``),
* ``generator.json`` — ``{"format", "config": GeneratorConfig fields, "weights_sha256" (of the file),
  "weights_fingerprint" (of the tensors, see :func:`weights_fingerprint`), ...}``,
* the handler ``services/sampler/handler.py`` (archived as :data:`HANDLER_MODULE` ``.py``), which
  rebuilds the network from medsynth code. medsynth must therefore be installed in the Python
  environment TorchServe's workers run in (TorchServe uses the interpreter that started it).

:func:`load_exported` is the inverse the handler calls on the unpacked archive directory.
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
from medsynth.models.gan import Generator, GeneratorConfig

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "generator.json"
EXPORT_FORMAT = "medsynth/generator-export/v1"
# The handler's module name inside the archive: unique, so no installed module can shadow it.
HANDLER_MODULE = "medsynth_sampler_handler"
# TorchServe's own rule for model names (model-archiver rejects anything else); versions likewise.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")
_ARCHIVER_TIMEOUT_S = 120


def default_handler_path() -> Path:
    """``services/sampler/handler.py`` of the source checkout medsynth is installed from (editable)."""
    return Path(__file__).resolve().parents[5] / "services" / "sampler" / "handler.py"


def build_model_archive(
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    *,
    model_name: str,
    version: str,
    out_dir: Path,
    handler: Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``<out_dir>/<model_name>.mar`` and return its path.

    ``config`` holds :class:`~medsynth.models.gan.GeneratorConfig` fields; ``state_dict`` must load
    into that generator strictly (checked here, so a broken archive is never written). The archive
    appears atomically (built aside, then renamed). Raises :class:`InvalidInput` for a bad name,
    version, config or state_dict, :class:`Conflict` if the archive exists and not ``overwrite``.
    """
    check_model_name(model_name)
    check_model_name(version, "model version")
    generator = rebuild_generator(config, state_dict)
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
        inputs = _write_inputs(work / "in", generator, model_name=model_name, version=version, handler=handler_path)
        staged = Path(tempfile.mkdtemp(prefix=".mar-", dir=out_dir))
        try:
            _run_archiver(inputs, model_name=model_name, version=version, export_dir=staged, tmpdir=work / "tmp")
            os.replace(staged / f"{model_name}.mar", target)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    log.info("wrote model archive %s (%d bytes)", target, target.stat().st_size)
    return target


def rebuild_generator(config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> Generator:
    """A CPU :class:`Generator` in eval mode built from ``config`` with ``state_dict`` loaded strictly."""
    if not isinstance(config, Mapping):
        raise InvalidInput(f"generator config must be a mapping of GeneratorConfig fields, got {type(config).__name__}.")
    try:
        cfg = GeneratorConfig(**dict(config))
    except TypeError as exc:
        raise InvalidInput(f"generator config {dict(config)!r} does not match GeneratorConfig: {exc}") from exc
    generator = Generator(cfg)
    try:
        generator.load_state_dict(dict(state_dict), strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        reason = " ".join(str(exc).split())
        raise InvalidInput(f"state_dict does not fit a generator with config {cfg.to_dict()}: {reason}") from exc
    return generator.eval()


def weights_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over a state_dict's content (sorted names, dtypes, shapes, raw bytes), independent of
    how it was serialised: the same weights give the same fingerprint in every process."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_exported(model_dir: str | Path, device: torch.device | str = "cpu") -> tuple[Generator, dict[str, Any]]:
    """The generator of an unpacked archive directory (eval mode, on ``device``) and its
    ``generator.json`` record. Checks the format and the weights' SHA-256."""
    model_dir = Path(model_dir)
    meta = _read_meta(model_dir / CONFIG_FILE)
    raw = _read_file(model_dir / WEIGHTS_FILE)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != meta["weights_sha256"]:
        raise InvalidInput(
            f"{model_dir / WEIGHTS_FILE} has SHA-256 {digest}, but {CONFIG_FILE} records {meta['weights_sha256']}."
        )
    state_dict = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    generator = rebuild_generator(meta["config"], state_dict)
    return generator.to(device).eval(), meta


# --- helpers ---------------------------------------------------------------------------------------


def check_model_name(value: object, what: str = "model name") -> str:
    """``value`` if TorchServe accepts it as a model name (or version), else :class:`InvalidInput`."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise InvalidInput(f"{what} must match {_NAME_RE.pattern} (TorchServe's rule), got {value!r}.")
    return value


def _write_inputs(directory: Path, generator: Generator, *, model_name: str, version: str, handler: Path) -> dict[str, Path]:
    directory.mkdir(parents=True)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}, buf)
    weights = buf.getvalue()
    meta = {
        "format": EXPORT_FORMAT,
        "config": generator.config.to_dict(),
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "weights_fingerprint": weights_fingerprint(generator.state_dict()),
        "model_name": model_name,
        "version": version,
        "torch": torch.__version__,
    }
    paths = {
        "weights": directory / WEIGHTS_FILE,
        "config": directory / CONFIG_FILE,
        "handler": directory / f"{HANDLER_MODULE}.py",
    }
    paths["weights"].write_bytes(weights)
    paths["config"].write_text(json.dumps(meta, indent=2, sort_keys=True))
    shutil.copyfile(handler, paths["handler"])
    return paths


def _run_archiver(inputs: dict[str, Path], *, model_name: str, version: str, export_dir: Path, tmpdir: Path) -> None:
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
        "--extra-files", str(inputs["config"]),
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
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise InvalidInput(f"{str(path)!r} is not a {EXPORT_FORMAT!r} record (format {found!r}).")
    if not isinstance(meta.get("config"), dict) or not isinstance(meta.get("weights_sha256"), str):
        raise InvalidInput(f"{str(path)!r} lacks 'config' or 'weights_sha256'.")
    return meta
