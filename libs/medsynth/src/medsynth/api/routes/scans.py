"""Ingest service: upload one NIfTI scan (and optional label map) into a dataset."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool

from medsynth.api.deps import BusDep, GuardDep, PrincipalDep, ProjectDep, SettingsDep, StoreDep
from medsynth.api.schemas import ScanPublic
from medsynth.bus.client import BusError
from medsynth.api.upload_stream import ScanForm, read_scan_form, upload_slots
from medsynth.core.errors import InvalidInput
from medsynth.datasets.ingest import ingest_scan, parse_label_names
from medsynth.datasets.manifest import ManifestVersion, ScanEntry
from medsynth.bus.messages import make_event
from medsynth.runtime.telemetry import INGESTED, INGESTED_BYTES
from medsynth.store.projects import Projects
from medsynth.v1 import events_pb2

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/datasets", tags=["scans"])

UPLOAD_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "required": ["patient_id", "image"],
        "properties": {
            "patient_id": {"type": "string", "description": "Pseudonymous patient id; scans are split by it."},
            "image": {"type": "string", "format": "binary", "description": "NIfTI image (.nii or .nii.gz), 2D or 3D; 4D (time) "
                                                                                "as the project's option time_series says."},
            "label": {"type": "string", "format": "binary", "description": "Optional integer label map on the image's grid."},
            "label_names": {"type": "string", "description": "Optional JSON object of label value to name, e.g. "
                                                             "{\"1\": \"Anterior\"} (a dataset.json's labels)."},
        },
    }}},
}


# The app caps request bodies at MEDSYNTH_MAX_JSON_BYTES; this route lifts that cap and applies its own
# while the form streams in (MEDSYNTH_MAX_UPLOAD_BYTES per file, checked in read_scan_form).
STREAMED = 2**50


@router.post("/{dataset}/scans", status_code=status.HTTP_201_CREATED, response_model=ScanPublic,
             openapi_extra={"requestBody": UPLOAD_BODY}, max_body_size=STREAMED,
             responses={413: {"description": "The body or a file is over MEDSYNTH_MAX_UPLOAD_BYTES, or a header declares too many voxels."},
                        422: {"description": "Not a scan: bad form, name, NIfTI header or content."},
                        503: {"description": "Too many large uploads in progress (MEDSYNTH_MAX_CONCURRENT_LARGE_UPLOADS); "
                                             "Retry-After says when to try again."}})
async def upload_scan(dataset: str, request: Request, settings: SettingsDep, store: StoreDep, bus: BusDep,
                      guard: GuardDep, principal: PrincipalDep, project: ProjectDep) -> ScanPublic:
    """Upload one scan (multipart: ``patient_id``, ``image``, optional ``label`` and ``label_names``). The body is read as
    it streams in, with a running size cap; each file's NIfTI header is checked from its first bytes.
    A key and a project may each upload MEDSYNTH_UPLOADS_PER_MINUTE_PER_KEY / _PER_PROJECT scans a minute (429 past it)."""
    try:
        guard.limit_upload(principal, project)
    except Exception as exc:
        exc.http_headers = {"Connection": "close"}  # the body stays unread
        raise
    declared = request.headers.get("content-length")
    try:
        form = await read_scan_form(request.headers.get("content-type", ""), int(declared) if declared and declared.isdigit() else None,
                                    request.stream(), file_limit=settings.max_upload_bytes, max_voxels=settings.max_voxels)
    except Exception as exc:
        INGESTED.labels(type(exc).__name__).inc()
        exc.http_headers = {"Connection": "close"}  # the rest of the body stays unread: end the connection
        raise
    try:
        async with upload_slots(request.app, settings).hold(form.received):  # its volume will be in memory
            return await _ingest(dataset, project, form, settings, store, bus, request.app.state.store)
    finally:
        form.close()


def scan_announcer(bus, project: str, dataset: str) -> Callable[[ScanEntry, ManifestVersion], None]:
    """Emits ``scan-ingested`` for each scan a dataset gains (whatever format it came in)."""

    def announce(entry: ScanEntry, manifest: ManifestVersion) -> None:
        ingested = events_pb2.ScanIngested(
            dataset=dataset,
            patient_id=entry.patient_id,
            scan_id=entry.scan_id,
            manifest_version=manifest.version,
            image_key=entry.image_key,
            label_key=entry.label_key or "",
        )
        try:
            bus.emit(make_event(project=project, scan_ingested=ingested))
        except BusError as exc:  # the manifest is the record; the event is a notification
            log.warning("scan %s ingested but scan-ingested event not sent: %s", entry.scan_id, exc)

    return announce


def scan_public(dataset: str, entry: ScanEntry, manifest: ManifestVersion) -> ScanPublic:
    return ScanPublic(
        dataset=dataset,
        dataset_version=manifest.version,
        **entry.model_dump(include=set(ScanPublic.model_fields) - {"dataset", "dataset_version"}),
    )


def _ingest_in_project(root, project: str, *args, **kwargs) -> tuple[ScanEntry, ManifestVersion]:
    """:func:`ingest_scan` under the project's option for time series (4D images)."""
    return ingest_scan(*args, time_series=Projects(root).get(project).dicom.time_series, **kwargs)


async def _ingest(dataset: str, project: str, form: ScanForm, settings, store, bus, root) -> ScanPublic:
    image_upload, label_upload = form.image, form.label
    announce = scan_announcer(bus, project, dataset)
    try:
        if not form.patient_id:
            raise InvalidInput("the form field patient_id is missing or empty.")
        if image_upload is None:
            raise InvalidInput("the file field image is missing or empty.")
        label_names = parse_label_names(form.label_names) if form.label_names else None
        entry, manifest = await run_in_threadpool(
            _ingest_in_project, root, project, store, dataset, form.patient_id, image_upload, label_upload,
            max_voxels=settings.max_voxels, on_ingested=announce, label_names=label_names,
        )
    except Exception as exc:
        INGESTED.labels(type(exc).__name__).inc()
        raise
    INGESTED.labels("accepted").inc()
    INGESTED_BYTES.inc(image_upload.size + (label_upload.size if label_upload else 0))
    return scan_public(dataset, entry, manifest)
