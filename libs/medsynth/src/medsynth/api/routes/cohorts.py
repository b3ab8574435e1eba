"""Synthetic cohorts: request one from a trained generator, follow it, download it as a zip, send it to a DICOM node."""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from medsynth.api.deps import JobsDep, SeesTrainingDataDep, SettingsDep, StoreDep
from medsynth.commands.requests import CohortCreate
from medsynth.api.schemas import CohortPublic, JobPublic, binary, job_with_result
from medsynth.api.submit import ACCEPTED, SubmissionDep
from medsynth.commands.build import cohort_command
from medsynth.core.errors import Forbidden, InvalidInput, NotFound
from medsynth.jobs.lookup import finished, of_kind
from medsynth.bus.messages import JobKind
from medsynth.dicom.send import send_instances
from medsynth.metrics.report import without_training_data
from medsynth.store import ObjectStore

router = APIRouter(prefix="/v1/cohorts", tags=["cohorts"])
CHUNK = 1024 * 1024


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic, responses=ACCEPTED)
def create_cohort(body: CohortCreate, store: StoreDep, jobs: JobsDep, submit: SubmissionDep) -> JobPublic:
    """404 for an unknown generator, 409 for one that is still training (or failed), 422 for a mask
    source or condition the generator cannot serve."""
    return submit.job(jobs, JobKind.sample_cohort, lambda: cohort_command(body, store, jobs.records), "/v1/cohorts/")


@router.get("/{cohort_id}", response_model=CohortPublic, response_model_exclude_unset=True)
def get_cohort(cohort_id: str, store: StoreDep, jobs: JobsDep, training_data: SeesTrainingDataDep) -> dict[str, Any]:
    """Status and progress; once done, the cohort manifest (its ``release`` section is the
    memorization audit: policy, thresholds and how they were set, draws flagged, the closest pairs —
    these only for a caller who may see training images)."""
    out = job_with_result(of_kind(jobs.records, cohort_id, JobKind.sample_cohort), "manifest", "manifest", store.get_json)
    if not training_data and "manifest" in out:
        out["manifest"] = without_training_data(out["manifest"])
    return out


@router.get("/{cohort_id}/closest-pairs.png", response_class=Response,
            responses=binary("image/png", "The closest pairs: each flagged draw beside its nearest training image."))
def cohort_closest_pairs(cohort_id: str, store: StoreDep, jobs: JobsDep) -> Response:
    """The memorization audit's figure: the draws closest to a training image, each beside it."""
    record = finished(jobs.records, cohort_id, JobKind.sample_cohort)
    release = store.get_json(record.result_keys["manifest"]).get("release") or {}
    if "closest_pairs" not in release:
        raise NotFound(f"cohort {cohort_id} was written before the memorization gate; it has no audit figure.")
    return Response(store.get_bytes(release["closest_pairs"]["key"]), media_type="image/png")


@router.get("/{cohort_id}/download", response_class=StreamingResponse,
            responses=binary("application/zip", "The cohort as a zip: samples, contact sheet, manifest."))
def download_cohort(cohort_id: str, request: Request, store: StoreDep, jobs: JobsDep) -> StreamingResponse:
    """The whole cohort (samples, contact sheet, manifest) as a zip, streamed. Its audit record
    carries the SHA-256 of the cohort's manifest, which lists every sample's digest."""
    record = finished(jobs.records, cohort_id, JobKind.sample_cohort)
    request.state.audit.detail["manifest_sha256"] = store.stat(record.result_keys["manifest"]).sha256
    prefix = record.result_keys["manifest"].rsplit("/", 1)[0] + "/"
    return StreamingResponse(
        _zip_stream(store, prefix, cohort_id),
        media_type="application/zip",
        headers={"content-disposition": f'attachment; filename="{cohort_id}.zip"'},
    )


class CohortSend(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    ae_title: str = Field(min_length=1, max_length=16, description="The receiving node's (called) AE title.")


class CohortSent(BaseModel):
    cohort_id: str
    destination: str
    sent: int
    failed: list[dict[str, str]]


@router.post("/{cohort_id}/send", response_model=CohortSent,
             responses={502: {"description": "The DICOM node cannot be reached or refuses the association."}})
def send_cohort(cohort_id: str, body: CohortSend, request: Request, store: StoreDep, jobs: JobsDep, settings: SettingsDep) -> CohortSent:
    """C-STORE a cohort made with ``formats: ["dicom"]`` (every image and its DICOM-SEG) to a DICOM node;
    only nodes listed in MEDSYNTH_DICOM_DESTINATIONS may be named (403 otherwise)."""
    request.state.audit.detail["destination"] = f"{body.ae_title}@{body.host}:{body.port}"
    allowed = [(n.host, n.port, n.ae_title) for n in settings.dicom_destinations]
    if (body.host, body.port, body.ae_title) not in allowed:
        raise Forbidden(f"{body.ae_title}@{body.host}:{body.port} is not among the DICOM destinations this service may send "
                        "to (MEDSYNTH_DICOM_DESTINATIONS).")
    record = finished(jobs.records, cohort_id, JobKind.sample_cohort)
    manifest = store.get_json(record.result_keys["manifest"])
    if "dicom" not in manifest.get("formats", []):
        raise InvalidInput(f"cohort {cohort_id} was made with formats {manifest.get('formats')}; request it with "
                           "formats [\"dicom\"] to send it as DICOM.")
    files = [(sample["dicom"][part]["key"], store.get_bytes(sample["dicom"][part]["key"]))
             for sample in manifest["samples"] for part in ("image", "seg")]
    result = send_instances(files, host=body.host, port=body.port, called_ae=body.ae_title, calling_ae=settings.dicom_ae_title)
    return CohortSent(cohort_id=cohort_id, destination=f"{body.ae_title}@{body.host}:{body.port}", sent=result.sent,
                      failed=[{"key": name, "reason": why} for name, why in result.failed])


def _zip_stream(store: ObjectStore, prefix: str, name: str) -> Iterator[bytes]:
    with tempfile.TemporaryFile() as spool:
        with zipfile.ZipFile(spool, "w", zipfile.ZIP_STORED) as archive:
            for key in store.list(prefix):
                with store.open(key) as src, archive.open(f"{name}/{key[len(prefix):]}", "w") as dst:
                    while chunk := src.read(CHUNK):
                        dst.write(chunk)
        spool.seek(0)
        while chunk := spool.read(CHUNK):
            yield chunk
