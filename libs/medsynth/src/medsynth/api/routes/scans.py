"""Ingest service: upload one NIfTI scan (and optional label map) into a dataset."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile, status
from fastapi.concurrency import run_in_threadpool

from medsynth.api.deps import BusDep, SettingsDep, StoreDep
from medsynth.api.schemas import ScanPublic
from medsynth.bus.client import BusError
from medsynth.datasets.ingest import Upload, ingest_scan
from medsynth.datasets.manifest import DatasetManifest, ScanEntry
from medsynth.bus.messages import make_event
from medsynth.runtime.telemetry import INGESTED, INGESTED_BYTES
from medsynth.v1 import events_pb2

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/datasets", tags=["scans"])

MULTIPART_OVERHEAD = 64 * 1024
READ_CHUNK = 1024 * 1024


async def _read_capped(upload: UploadFile, what: str, limit: int) -> Upload:
    chunks, size = [], 0
    while chunk := await upload.read(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"{what} is larger than the {limit}-byte limit.")
        chunks.append(chunk)
    return Upload(filename=upload.filename or "", data=b"".join(chunks))


@router.post("/{dataset}/scans", status_code=status.HTTP_201_CREATED, response_model=ScanPublic)
async def upload_scan(
    dataset: str,
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    bus: BusDep,
    patient_id: Annotated[str, Form(description="Pseudonymous patient id; scans are split by it.")],
    image: Annotated[UploadFile, File(description="NIfTI image (.nii or .nii.gz), 2D or 3D.")],
    label: Annotated[UploadFile | None, File(description="Optional integer label map on the image's grid.")] = None,
) -> ScanPublic:
    limit = settings.max_upload_bytes
    declared = int(request.headers.get("content-length") or 0)
    if declared > 2 * limit + MULTIPART_OVERHEAD:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"upload of {declared} bytes exceeds the limit.")
    image_upload = await _read_capped(image, "image", limit)
    label_upload = await _read_capped(label, "label map", limit) if label is not None and label.filename else None

    def announce(entry: ScanEntry, manifest: DatasetManifest) -> None:
        ingested = events_pb2.ScanIngested(
            dataset=dataset,
            patient_id=entry.patient_id,
            scan_id=entry.scan_id,
            manifest_version=manifest.version,
            image_key=entry.image_key,
            label_key=entry.label_key or "",
        )
        try:
            bus.emit(make_event(scan_ingested=ingested))
        except BusError as exc:  # the manifest is the record; the event is a notification
            log.warning("scan %s ingested but scan-ingested event not sent: %s", entry.scan_id, exc)

    try:
        entry, manifest = await run_in_threadpool(
            ingest_scan, store, dataset, patient_id, image_upload, label_upload,
            max_voxels=settings.max_voxels, on_ingested=announce,
        )
    except Exception as exc:
        INGESTED.labels(type(exc).__name__).inc()
        raise
    INGESTED.labels("accepted").inc()
    INGESTED_BYTES.inc(len(image_upload.data) + (len(label_upload.data) if label_upload else 0))
    return ScanPublic(
        dataset=dataset,
        dataset_version=manifest.version,
        **entry.model_dump(include=set(ScanPublic.model_fields) - {"dataset", "dataset_version"}),
    )
