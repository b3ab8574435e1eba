"""`medsynth ingest DIR`: upload a folder through the ingest service.

* A Medical Segmentation Decathlon folder: ``DIR/imagesTr/<case>.nii.gz`` (+ ``DIR/labelsTr/<case>.nii.gz``
  when present), or an nnU-Net raw dataset: ``DIR/imagesTr/<case>_0000.nii.gz`` + ``DIR/labelsTr/<case>.nii.gz``
  (:mod:`medsynth.io.nnunet`). The patient id is the case name unless a mapping says otherwise — one
  patient often has several scans, and a split that takes each file for its own patient leaks patients
  between training and test: ``--patients map.csv`` (columns ``case,patient_id``) or ``--patient-pattern REGEX``
  (the first group, or the group named ``patient``, of a match against the case name).
  A ``dataset.json`` that declares several modalities (Decathlon BraTS, prostate: channels on each image's
  fourth axis) or channels (nnU-Net: a file per channel), or a case with several channel files, is
  rejected here, with that reason, and not sent (channels are not supported yet; the service would
  take a fourth axis for time). The label names a dataset.json declares go with each labelled upload.
* A folder of DICOM files (any depth; no ``imagesTr/``): one upload per patient (PatientID) to the
  DICOM route, each series becoming a scan, de-identified by the service. The service decides series by
  series; the summary counts them — accepted, unlabeled (stored without the mask sent with them: the
  mask's reason), quarantined, refused, already present — and names each that was not accepted by the
  folder (or files) it was sent from, never by anything read from the files.

``on_error="stop"`` sends no further patient (or case) once one was refused, quarantined or not sent
for the platform's reasons (those in flight finish); the rest are listed as not sent. ``"skip"`` (the
default) goes on.

Uploads run concurrently through :func:`medsynth.local.api_client.api_client`: the platform's own
pacing (429, with Retry-After) and a service that is down for a moment (503) are waited out and the
upload sent again, so that a folder ends with every case accepted, already present (a 409), rejected
for a reason of its own (the service's, listed), or — only past the retries' deadline — failed for the
platform's (also listed: run the command again to send those).
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeVar

import httpx

from medsynth.core.errors import InvalidInput
from medsynth.io.nnunet import DatasetJson, raw_cases, read_dataset_json, several_channels
from medsynth.local.api_client import RetryPolicy, api_client


@dataclass(frozen=True)
class Case:
    """One upload: ``name`` is the case's (its image file's, or nnU-Net's ``<case>``); ``label_names``
    (value, name) what the dataset.json calls the label values; ``refused`` why it is not sent."""

    patient_id: str
    image: Path
    label: Path | None
    name: str
    label_names: tuple[tuple[int, str], ...] = ()
    refused: str | None = None


@dataclass
class Summary:
    """Each case of a folder (each series, for DICOM) in one of the lists. ``rejected``: refused for a
    reason of its own (bad file, wrong dataset, no permission); ``failed``: not in for the platform's
    reasons (unreachable, unavailable or still over its rate when the retries ran out) — sending it
    again may work. DICOM only: ``quarantined`` (may show identity in its pixels), ``unlabeled`` (stored
    without its mask, the mask's reason given). ``not_sent``: left out by ``on_error="stop"``."""

    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    quarantined: dict[str, str] = field(default_factory=dict)
    unlabeled: dict[str, str] = field(default_factory=dict)
    not_sent: list[str] = field(default_factory=list)
    dicom: bool = False

    @property
    def complete(self) -> bool:
        """Every case is in the dataset (accepted now or before; unlabeled ones too)."""
        return not self.missing()

    @property
    def as_sent(self) -> bool:
        """Every case is in the dataset as it was sent (none stored without its mask)."""
        return self.complete and not self.unlabeled

    def missing(self) -> dict[str, str]:
        """The cases that are not in the dataset, with why."""
        stopped = {name: "not sent: an earlier one was not stored, and --on-error is stop" for name in self.not_sent}
        return {**self.rejected, **self.quarantined, **self.failed, **stopped}

    def record(self, case: str, outcome: httpx.Response | httpx.HTTPError) -> None:
        """File ``case`` under the list its upload's answer (or the error that took its place) says."""
        if isinstance(outcome, httpx.HTTPError):
            self.failed[case] = f"upload failed: {outcome}"
        elif outcome.status_code == 201:
            self.accepted.append(case)
        elif outcome.status_code == 409:
            self.duplicates.append(case)
        elif outcome.status_code in PLATFORM_STATUSES or outcome.status_code >= 500:
            self.failed[case] = f"HTTP {outcome.status_code}: {_detail(outcome)}"
        else:
            self.rejected[case] = f"HTTP {outcome.status_code}: {_detail(outcome)}"

    def lines(self) -> list[str]:
        if self.dicom:
            head = (f"accepted {len(self.accepted)}, unlabeled {len(self.unlabeled)}, quarantined {len(self.quarantined)}, "
                    f"refused {len(self.rejected)}, already present {len(self.duplicates)}")
        else:
            head = f"accepted {len(self.accepted)}, already present {len(self.duplicates)}, rejected {len(self.rejected)}"
        head += f", failed {len(self.failed)} (the platform's reason, not the case's: send them again)" if self.failed else ""
        head += f", not sent {len(self.not_sent)} (--on-error stop)" if self.not_sent else ""
        out = [head]
        if self.dicom:
            for fate, named in (("refused", self.rejected), ("quarantined", self.quarantined), ("failed", self.failed),
                                ("unlabeled", self.unlabeled)):
                out += [f"  {fate} {name}: {reason}" for name, reason in sorted(named.items())]
            out += [f"  not sent {name}" for name in self.not_sent]
        else:
            out += [f"  {case}: {reason}" for case, reason in sorted(self.missing().items())]
        missing = self.missing()
        reasons = Counter(reason.split(":")[0] for reason in missing.values())
        if len(missing) > 1:
            out += [f"  ({n}x) {reason}" for reason, n in reasons.most_common() if n > 1]
        return out


PLATFORM_STATUSES = frozenset({408, 429})  # with 5xx: not the case's fault


PatientOf = Callable[[str], str]


def patient_mapping(csv_path: Path | None = None, pattern: str | None = None) -> PatientOf:
    """case name → patient id: from a CSV (``case,patient_id``; every case must be listed), a regex, or
    the case name itself."""
    if csv_path is not None and pattern is not None:
        raise InvalidInput("give a patient CSV or a patient pattern, not both")
    if csv_path is not None:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"case", "patient_id"} <= set(rows[0]):
            raise InvalidInput(f"{csv_path} needs the columns case and patient_id")
        table = {r["case"].strip(): r["patient_id"].strip() for r in rows}

        def from_csv(case: str) -> str:
            if case not in table:
                raise InvalidInput(f"case {case!r} is not in {csv_path}")
            return table[case]

        return from_csv
    if pattern is not None:
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise InvalidInput(f"patient pattern {pattern!r} is not a regular expression: {exc}") from None
        if regex.groups < 1:
            raise InvalidInput(f"patient pattern {pattern!r} needs a group that captures the patient id")

        def from_pattern(case: str) -> str:
            match = regex.search(case)
            if match is None:
                raise InvalidInput(f"case {case!r} does not match the patient pattern {pattern!r}")
            return match.group("patient") if "patient" in regex.groupindex else match.group(1)

        return from_pattern
    return lambda case: case


def find_cases(root: Path, patient_of: PatientOf | None = None) -> list[Case]:
    """The cases of a Decathlon or nnU-Net folder (:func:`medsynth.io.nnunet.raw_cases`), each with its
    patient and, where its dataset.json names them, its label values' names (background left out)."""
    declared = read_dataset_json(root)
    patient_of = patient_of or (lambda case: case)
    names = tuple((v, n) for v, n in (declared.labels if declared else {}).items() if v != 0)
    return [Case(patient_of(c.name), c.images[0], c.label, c.name, names if c.label else (), several_channels(c))
            for c in raw_cases(root, declared)]


def declared_channels(root: Path) -> list[str]:
    """The modalities (Decathlon: ``"modality": {"0": "FLAIR", "1": "T1w", ...}``) or channels (nnU-Net:
    ``channel_names``) ``root/dataset.json`` declares, in channel order; [] when there is no dataset.json
    or it declares none."""
    declared = read_dataset_json(root)
    return list(declared.channels) if declared else []


def _channels_refused(declared: DatasetJson) -> str:
    channels = f"{len(declared.channels)} {{}} ({', '.join(declared.channels)})"
    if declared.layout == "nnunet-v2":
        return (f"dataset.json declares {channels.format('channels')}: each case is one image per channel; "
                "multi-channel images are not supported yet")
    return (f"dataset.json declares {channels.format('modalities')}: each image holds them as channels on its fourth axis, "
            "not time points; multi-channel images are not supported yet")


def dicom_patients(root: Path) -> dict[str, list[Path]]:
    """The DICOM files under ``root`` by PatientID (headers only are read; non-DICOM files are skipped)."""
    import pydicom

    found: dict[str, list[Path]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        except Exception:  # noqa: BLE001 - not DICOM: not ours to upload
            continue
        found.setdefault(str(ds.get("PatientID", "") or ""), []).append(path)
    return found


def upload_case(client: httpx.Client, url: str, dataset: str, case: Case) -> httpx.Response:
    files = {"image": (case.image.name, case.image.read_bytes(), "application/octet-stream")}
    data = {"patient_id": case.patient_id}
    if case.label is not None:
        files["label"] = (case.label.name, case.label.read_bytes(), "application/octet-stream")
        if case.label_names:
            data["label_names"] = json.dumps({str(value): name for value, name in case.label_names})
    return client.post(f"{url}/v1/datasets/{dataset}/scans", data=data, files=files)


#: One scan per request, and the same image twice is a 409: an upload may be sent again after a 503
#: or a cut connection as well as after a 429.
UPLOAD_RETRY = RetryPolicy(idempotent_posts=True)


OnError = Literal["skip", "stop"]
Item = TypeVar("Item")


def _each(items: Sequence[Item], send: Callable[[Item], httpx.Response],
          handle: Callable[[Item, httpx.Response | httpx.HTTPError], bool], *, workers: int, on_error: OnError, progress) -> list[Item]:
    """``send`` each item, at most ``workers`` at a time, and ``handle`` its answer (False: something
    of it was not stored). Under ``on_error="stop"`` nothing more is sent after a False (what is in
    flight finishes); returns the items not sent."""
    queue = list(items)
    stopped = False
    with ThreadPoolExecutor(workers) as pool:
        running: dict[Future, Item] = {}
        while queue or running:
            while queue and not stopped and len(running) < workers:
                item = queue.pop(0)
                running[pool.submit(send, item)] = item
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                item = running.pop(future)
                try:
                    outcome = future.result()
                except httpx.HTTPError as exc:
                    outcome = exc
                if not handle(item, outcome) and on_error == "stop":
                    stopped = True
                progress.update(1)
    return queue


def ingest_folder(root: Path, dataset: str, url: str, *, api_key: str, workers: int = 4, progress: bool = True,
                  patient_of: PatientOf | None = None, retry: RetryPolicy = UPLOAD_RETRY, on_error: OnError = "skip") -> Summary:
    """Upload a Decathlon or nnU-Net folder (or a folder of DICOM files, one request per patient); the
    summary names NIfTI cases by their case name, DICOM series by the folder (or files) they came from."""
    from tqdm import tqdm

    if on_error not in ("skip", "stop"):
        raise InvalidInput(f"on_error is skip or stop, not {on_error!r}")
    if not (root / "imagesTr").is_dir() and (patients := dicom_patients(root)):
        return _ingest_dicom(root, patients, dataset, url, api_key=api_key, workers=workers, progress=progress, retry=retry,
                             on_error=on_error)
    cases = find_cases(root, patient_of)
    summary = Summary()
    declared = read_dataset_json(root)
    if declared is not None and len(declared.channels) > 1:
        summary.rejected.update({c.name: _channels_refused(declared) for c in cases})
        return summary
    summary.rejected.update({c.name: c.refused for c in cases if c.refused})
    cases = [c for c in cases if not c.refused]

    def handle(case: Case, outcome: httpx.Response | httpx.HTTPError) -> bool:
        summary.record(case.name, outcome)
        return case.name not in summary.missing()

    with api_client(api_key=api_key, timeout=300, retry=retry) as client, \
            tqdm(total=len(cases), unit="scan", disable=not progress, desc=dataset) as bar:
        left = _each(cases, lambda c: upload_case(client, url.rstrip("/"), dataset, c), handle, workers=workers, on_error=on_error,
                     progress=bar)
    summary.not_sent += [c.name for c in left]
    return summary


def _sent_names(files: list[Path]) -> dict[str, Path]:
    """The name each file is sent under: its own, or where two share one, its path below the patient's folder."""
    if len({f.name for f in files}) == len(files):
        return {f.name: f for f in files}
    common = Path(*[parts[0] for parts in zip(*(f.parent.parts for f in files)) if len(set(parts)) == 1])
    return {f.relative_to(common).as_posix(): f for f in files}


def _named(sent: list[str], paths: dict[str, Path], root: Path, in_folder: Counter) -> str:
    """Files the service names, as the user knows them: ``folder/ (24 files)`` for a whole folder,
    else the files (the first of each folder, and how many more)."""
    local = [paths[name] for name in sent if name in paths]
    parts = []
    for folder in dict.fromkeys(p.parent for p in local):
        here = [p for p in local if p.parent == folder]
        where = folder.relative_to(root).as_posix() if folder != root else "."
        if len(here) == in_folder[folder] and len(here) > 1:
            parts.append(f"{where}/ ({len(here)} files)")
        else:
            first = here[0].relative_to(root).as_posix()
            parts.append(first if len(here) == 1 else f"{first} and {len(here) - 1} more in {where}/")
    parts += [name for name in sent if name not in paths]  # a zip's members, as the service names them
    return " + ".join(parts) or "?"


def _ingest_dicom(root: Path, patients: dict[str, list[Path]], dataset: str, url: str, *, api_key: str, workers: int,
                  progress: bool, retry: RetryPolicy, on_error: OnError) -> Summary:
    """One upload per patient; each series of the answer filed under its fate, named by the folder its
    files came from (never the PatientID, which is an identifier). An upload may hold several series,
    some of which a failed attempt may have stored: it is sent again after a 429 or an unopened
    connection only, never after a 503."""
    from tqdm import tqdm

    summary = Summary(dicom=True)
    in_folder = Counter(f.parent for files in patients.values() for f in files)
    uploads = [_sent_names(files) for files in patients.values()]

    def send(client: httpx.Client, names: dict[str, Path]) -> httpx.Response:
        parts = [("file", (name, path.read_bytes(), "application/dicom")) for name, path in names.items()]
        return client.post(f"{url.rstrip('/')}/v1/datasets/{dataset}/dicom", files=parts)

    def whole(names: dict[str, Path]) -> str:
        return _named(list(names), names, root, in_folder)

    def handle(names: dict[str, Path], response: httpx.Response | httpx.HTTPError) -> bool:
        series = _series(response)
        if series is None:  # the upload as a whole: not sent, or refused before any series was looked at
            summary.record(whole(names), response)
            return whole(names) not in summary.missing()
        clean = True
        for outcome in series:
            name = _named(outcome.get("files") or [], names, root, in_folder)
            fate, reason = outcome.get("fate"), outcome.get("reason") or ""
            if fate == "stored":
                summary.accepted.append(name)
            elif fate == "stored-unlabeled":
                summary.unlabeled[name] = "; ".join(outcome.get("warnings") or []) or "stored without its mask"
            elif fate == "already-present":
                summary.duplicates.append(name)
            elif fate == "quarantined":
                summary.quarantined[name], clean = reason, False
            else:
                summary.rejected[name], clean = reason or "refused", False
        return clean

    with api_client(api_key=api_key, timeout=600, retry=replace(retry, idempotent_posts=False)) as client, \
            tqdm(total=len(uploads), unit="patient", disable=not progress, desc=dataset) as bar:
        left = _each(uploads, lambda names: send(client, names), handle, workers=workers, on_error=on_error, progress=bar)
    summary.not_sent += [whole(names) for names in left]
    return summary


def _series(response: httpx.Response | httpx.HTTPError) -> list[dict] | None:
    """The per-series outcomes of a DICOM upload's answer; None when it has none (an error of the
    upload as a whole, or of the platform)."""
    if isinstance(response, httpx.HTTPError) or response.status_code not in (201, 207, 409, 422):
        return None
    try:
        series = response.json().get("series")
    except (ValueError, AttributeError):
        return None
    return series if isinstance(series, list) and series else None


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text[:200]
    return detail if isinstance(detail, str) else str(detail)
