"""`medsynth ingest DIR`: upload a folder through the ingest service.

* A Medical Segmentation Decathlon folder: ``DIR/imagesTr/<case>.nii.gz`` (+ ``DIR/labelsTr/<case>.nii.gz``
  when present). The patient id is the case name unless a mapping says otherwise — one patient often
  has several scans, and a split that takes each file for its own patient leaks patients between
  training and test: ``--patients map.csv`` (columns ``case,patient_id``) or ``--patient-pattern REGEX``
  (the first group, or the group named ``patient``, of a match against the case name).
  A ``dataset.json`` that declares several modalities (Decathlon BraTS, prostate) means each image
  holds them as channels on its fourth axis: such cases are rejected here, with that reason, and not
  sent (the service would take a fourth axis for time; channels are not supported yet).
* A folder of DICOM files (any depth; no ``imagesTr/``): one upload per patient (PatientID) to the
  DICOM route, each series becoming a scan, de-identified by the service.

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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from medsynth.core.errors import InvalidInput
from medsynth.local.api_client import RetryPolicy, api_client

SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Case:
    patient_id: str
    image: Path
    label: Path | None


@dataclass
class Summary:
    """Each case of a folder in one of four lists. ``rejected``: refused for a reason of its own (bad
    file, wrong dataset, no permission); ``failed``: not in for the platform's reasons (unreachable,
    unavailable or still over its rate when the retries ran out) — sending it again may work."""

    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every case is in the dataset (accepted now or before)."""
        return not self.rejected and not self.failed

    def missing(self) -> dict[str, str]:
        """The cases that are not in the dataset, with why."""
        return {**self.rejected, **self.failed}

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
        head = f"accepted {len(self.accepted)}, already present {len(self.duplicates)}, rejected {len(self.rejected)}"
        out = [head + (f", failed {len(self.failed)} (the platform's reason, not the case's: send them again)" if self.failed else "")]
        missing = self.missing()
        out += [f"  {case}: {reason}" for case, reason in sorted(missing.items())]
        reasons = Counter(reason.split(":")[0] for reason in missing.values())
        if len(missing) > 1:
            out += [f"  ({n}x) {reason}" for reason, n in reasons.most_common() if n > 1]
        return out


PLATFORM_STATUSES = frozenset({408, 429})  # with 5xx: not the case's fault


def case_name(path: Path) -> str | None:
    name = path.name
    if name.startswith("."):  # macOS '._' resource forks ship inside the official MSD tarballs
        return None
    return next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), None)


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
    images = root / "imagesTr"
    if not images.is_dir():
        raise InvalidInput(f"{root} is not in the Decathlon layout: no imagesTr/ folder")
    patient_of = patient_of or (lambda case: case)
    labels = {case_name(p): p for p in (root / "labelsTr").glob("*")} if (root / "labelsTr").is_dir() else {}
    cases = []
    for path in sorted(images.iterdir()):
        name = case_name(path)
        if name is not None:
            cases.append(Case(patient_of(name), path, labels.get(name)))
    return cases


def declared_channels(root: Path) -> list[str]:
    """The modalities ``root/dataset.json`` declares (``"modality": {"0": "FLAIR", "1": "T1w", ...}``),
    in channel order; [] when there is no dataset.json or it declares none."""
    path = root / "dataset.json"
    if not path.is_file():
        return []
    try:
        modality = json.loads(path.read_text()).get("modality") or {}
    except (ValueError, AttributeError) as exc:
        raise InvalidInput(f"{path} is not a Decathlon dataset.json: {exc}") from None
    if isinstance(modality, dict):
        return [str(modality[k]) for k in sorted(modality, key=lambda k: int(k) if str(k).isdigit() else 0)]
    return [str(m) for m in modality] if isinstance(modality, list) else [str(modality)]


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
    if case.label is not None:
        files["label"] = (case.label.name, case.label.read_bytes(), "application/octet-stream")
    return client.post(f"{url}/v1/datasets/{dataset}/scans", data={"patient_id": case.patient_id}, files=files)


#: One scan per request, and the same image twice is a 409: an upload may be sent again after a 503
#: or a cut connection as well as after a 429.
UPLOAD_RETRY = RetryPolicy(idempotent_posts=True)


def ingest_folder(root: Path, dataset: str, url: str, *, api_key: str, workers: int = 4, progress: bool = True,
                  patient_of: PatientOf | None = None, retry: RetryPolicy = UPLOAD_RETRY) -> Summary:
    """Upload a Decathlon folder (or a folder of DICOM files, one request per patient); the summary
    names NIfTI cases by their file's case name."""
    from tqdm import tqdm

    if not (root / "imagesTr").is_dir() and (patients := dicom_patients(root)):
        return _ingest_dicom(patients, dataset, url, api_key=api_key, workers=workers, progress=progress, retry=retry)
    cases = find_cases(root, patient_of)
    summary = Summary()
    if len(channels := declared_channels(root)) > 1:
        reason = (f"dataset.json declares {len(channels)} modalities ({', '.join(channels)}): each image holds them as channels "
                  "on its fourth axis, not time points; multi-channel images are not supported yet")
        summary.rejected.update({case_name(c.image): reason for c in cases})
        return summary
    with api_client(api_key=api_key, timeout=300, retry=retry) as client, ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(upload_case, client, url.rstrip("/"), dataset, c): case_name(c.image) for c in cases}
        for future in tqdm(as_completed(futures), total=len(futures), unit="scan", disable=not progress, desc=dataset):
            try:
                outcome = future.result()
            except httpx.HTTPError as exc:
                outcome = exc
            summary.record(futures[future], outcome)
    return summary


def _ingest_dicom(patients: dict[str, list[Path]], dataset: str, url: str, *, api_key: str, workers: int, progress: bool,
                  retry: RetryPolicy) -> Summary:
    """One upload per patient; the summary names patients by their files' folder (never the PatientID,
    which is an identifier). An upload may hold several series, some of which a failed attempt may
    have stored: it is sent again after a 429 or an unopened connection only, never after a 503."""
    from tqdm import tqdm

    summary = Summary()

    def upload(client: httpx.Client, files: list[Path]) -> httpx.Response:
        parts = [("file", (f.name, f.read_bytes(), "application/dicom")) for f in files]
        return client.post(f"{url.rstrip('/')}/v1/datasets/{dataset}/dicom", files=parts)

    with api_client(api_key=api_key, timeout=600, retry=replace(retry, idempotent_posts=False)) as client, \
            ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(upload, client, files): f"{files[0].parent.name} ({len(files)} files)" for files in patients.values()}
        for future in tqdm(as_completed(futures), total=len(futures), unit="patient", disable=not progress, desc=dataset):
            name = futures[future]
            try:
                response = future.result()
            except httpx.HTTPError as exc:
                summary.record(name, exc)
                continue
            if response.status_code == 201:
                summary.accepted.extend(s["scan_id"] for s in response.json()["scans"])
            else:
                summary.record(name, response)
    return summary


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text[:200]
    return detail if isinstance(detail, str) else str(detail)
