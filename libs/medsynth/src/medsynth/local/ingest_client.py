"""`medsynth ingest DIR`: upload a Medical Segmentation Decathlon folder through the ingest service.

``DIR/imagesTr/<case>.nii.gz`` (+ ``DIR/labelsTr/<case>.nii.gz`` when present); the patient id is the
case name. Uploads run concurrently; a duplicate (409) counts as already present, every other
rejection is listed with the service's reason.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from medsynth.core.errors import InvalidInput

SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Case:
    patient_id: str
    image: Path
    label: Path | None


@dataclass
class Summary:
    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"accepted {len(self.accepted)}, already present {len(self.duplicates)}, rejected {len(self.rejected)}"]
        reasons = Counter(reason.split(":")[0] for reason in self.rejected.values())
        out += [f"  {case}: {reason}" for case, reason in sorted(self.rejected.items())]
        if len(self.rejected) > 1:
            out += [f"  ({n}x) {reason}" for reason, n in reasons.most_common() if n > 1]
        return out


def case_name(path: Path) -> str | None:
    name = path.name
    if name.startswith("."):  # macOS '._' resource forks ship inside the official MSD tarballs
        return None
    return next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), None)


def find_cases(root: Path) -> list[Case]:
    images = root / "imagesTr"
    if not images.is_dir():
        raise InvalidInput(f"{root} is not in the Decathlon layout: no imagesTr/ folder")
    labels = {case_name(p): p for p in (root / "labelsTr").glob("*")} if (root / "labelsTr").is_dir() else {}
    cases = []
    for path in sorted(images.iterdir()):
        name = case_name(path)
        if name is not None:
            cases.append(Case(name, path, labels.get(name)))
    return cases


def upload_case(client: httpx.Client, url: str, dataset: str, case: Case) -> httpx.Response:
    files = {"image": (case.image.name, case.image.read_bytes(), "application/octet-stream")}
    if case.label is not None:
        files["label"] = (case.label.name, case.label.read_bytes(), "application/octet-stream")
    return client.post(f"{url}/v1/datasets/{dataset}/scans", data={"patient_id": case.patient_id}, files=files)


def ingest_folder(root: Path, dataset: str, url: str, *, api_key: str, workers: int = 4, progress: bool = True) -> Summary:
    from tqdm import tqdm

    cases = find_cases(root)
    summary = Summary()
    with httpx.Client(timeout=300, headers={"Authorization": f"Bearer {api_key}"}) as client, ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(upload_case, client, url.rstrip("/"), dataset, c): c for c in cases}
        for future in tqdm(as_completed(futures), total=len(futures), unit="scan", disable=not progress, desc=dataset):
            case = futures[future]
            try:
                response = future.result()
            except httpx.HTTPError as exc:
                summary.rejected[case.patient_id] = f"upload failed: {exc}"
                continue
            if response.status_code == 201:
                summary.accepted.append(case.patient_id)
            elif response.status_code == 409:
                summary.duplicates.append(case.patient_id)
            else:
                summary.rejected[case.patient_id] = f"HTTP {response.status_code}: {_detail(response)}"
    return summary


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text[:200]
    return detail if isinstance(detail, str) else str(detail)
