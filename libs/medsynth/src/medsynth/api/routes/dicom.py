"""Ingest service: DICOM in. A REST upload of files (or zips) assembled at once; DICOMweb STOW-RS,
whose instances are staged until their series is committed (explicitly, or after a quiet period).
Either way every instance is de-identified in memory before anything is stored, and what becomes of
the upload is decided series by series: a bad series costs itself, never the rest of the upload, and
every series sent is listed with its fate (``GET …/dicom/series``)."""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Iterator
from typing import Literal

from fastapi import APIRouter, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from pydicom.dataset import Dataset

from medsynth.api.deps import BusDep, GuardDep, PrincipalDep, ProjectDep, SettingsDep, StoreDep
from medsynth.api.pagination import Page, PageDep
from medsynth.api.routes.scans import STREAMED, scan_announcer, scan_public
from medsynth.api.schemas import ScanPublic
from medsynth.api.upload_stream import FilesForm, read_files_form, upload_slots
from medsynth.core.errors import InvalidInput, MedsynthError, TooLarge, UnsupportedMediaType
from medsynth.core.names import check_name
from medsynth.datasets.dicom_ingest import STORED, Fate, Received, SeriesOutcome, ingest_patient, receive
from medsynth.datasets.dicom_staging import (Assessment, SeriesQuarantined, SeriesRecord, assess, commit, quarantine,
                                             quarantine_reason, record_outcomes, reject, series_records, stage, staged_already)
from medsynth.dicom.masks import is_mask
from medsynth.dicom.deid import Deidentifier, deid_policy
from medsynth.dicom.series import read_instance
from medsynth.runtime.http import Problem, problem_response, problem_type
from medsynth.runtime.telemetry import DICOM_INSTANCES, INGESTED
from medsynth.store.projects import Projects, TimeSeries

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/datasets", tags=["dicom"])

ZIP_MAGIC = b"PK\x03\x04"
DICOM_MEDIA_TYPE = "application/dicom"
# STOW-RS failure reasons (DICOM PS3.18 / PS3.7 status codes)
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
#: PS3.4 B000, Coercion of Data Elements (every instance is: it is de-identified): the warning an
#: instance is acknowledged with when its series is staged but cannot be stored as it stands yet.
COERCED = 0xB000


class Quarantined(BaseModel):
    name: str
    reason: str


FATES: tuple[Fate, ...] = ("stored", "stored-unlabeled", "quarantined", "refused", "already-present")


class DicomUploadPublic(BaseModel):
    dataset: str
    scans: list[ScanPublic] = Field(description="The scans stored now.")
    series: list[SeriesOutcome] = Field(default_factory=list, description="Every series sent (and every file that is no "
                                        "series), in the order they came, with its fate.")
    counts: dict[str, int] = Field(default_factory=dict, description="Series by fate: stored, stored-unlabeled, quarantined, "
                                   "refused, already-present.")
    quarantined: list[Quarantined] = Field(description="Every quarantined instance (its series' outcome says so too).")
    detail: str | None = Field(None, description="When nothing was stored: why, series by series.")


class DicomUploadProblem(Problem):
    """A DICOM upload that stored nothing (409, 422): a problem document whose extension members are
    the upload's answer (every series with its fate)."""

    dataset: str
    scans: list[ScanPublic] = Field(description="Empty: nothing was stored.")
    series: list[SeriesOutcome] = Field(default_factory=list, description="Every series sent, with its fate and reason.")
    counts: dict[str, int] = Field(default_factory=dict, description="Series by fate.")
    quarantined: list[Quarantined] = Field(description="Every quarantined instance.")


class SeriesCommittedPublic(BaseModel):
    dataset: str
    series: list[SeriesRecord] = Field(description="The series committed now, each with its outcome.")


class SeriesListPublic(Page):
    dataset: str
    series: list[SeriesRecord]


def deidentifier(request: Request, project: str) -> Deidentifier:
    """The project's de-identifier (its key and options), made once per process."""
    cache: dict[str, Deidentifier] = request.app.state.__dict__.setdefault("deidentifiers", {})
    if project not in cache:
        cache[project] = Deidentifier(deid_policy(request.app.state.store, project))
    return cache[project]


def time_series_option(request: Request, project: str) -> TimeSeries:
    """The project's DICOM option for time series (read each time: one small object)."""
    return Projects(request.app.state.store).get(project).dicom.time_series


#: A zip declaring less than this, inflated, is not held to MEDSYNTH_MAX_ZIP_RATIO: small archives may
#: compress oddly well (blank frames) and cannot hurt.
ZIP_RATIO_FLOOR = 16 * 1024**2


def dicom_files(form: FilesForm, limit: int, max_ratio: float) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every DICOM file uploaded, zips opened from disk one member at a time, each
    zip checked by :func:`check_zip` from its central directory before any member is inflated. A member
    cannot inflate past the size it declares (zipfile stops there, and its CRC check then fails)."""
    inflated = 0
    for upload in form.files:
        if _head(upload, len(ZIP_MAGIC)) != ZIP_MAGIC:
            yield upload.filename, upload.read()
            continue
        try:
            with zipfile.ZipFile(upload.path if upload.data is None else io.BytesIO(upload.data)) as archive:
                members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")
                           and m.filename.rsplit("/", 1)[-1].upper() != "DICOMDIR"]
                inflated += check_zip(upload.filename, members, upload.size, inflated, limit, max_ratio)
                for member in members:
                    yield f"{upload.filename}:{member.filename}", archive.read(member)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
            raise InvalidInput(f"{upload.filename} is not a readable zip archive: {exc}") from None


def check_zip(name: str, members: list[zipfile.ZipInfo], size: int, before: int, limit: int, max_ratio: float) -> int:
    """The bytes a zip of ``size`` bytes declares its ``members`` inflate to (their ``file_size`` in its
    central directory). :class:`TooLarge` (413) if that, with the ``before`` bytes of the upload's other
    zips, passes ``limit``, or if it is over :data:`ZIP_RATIO_FLOOR` and ``max_ratio`` times ``size``."""
    declared = sum(m.file_size for m in members)
    if before + declared > limit:
        others = f" ({before + declared} with the upload's other zips)" if before else ""
        raise TooLarge(f"{name} declares {declared} bytes inflated in {len(members)} files{others}, more than the "
                       f"{limit}-byte limit (MEDSYNTH_MAX_DICOM_UPLOAD_BYTES); refused before inflating it.")
    if declared > ZIP_RATIO_FLOOR and declared > max_ratio * size:
        raise TooLarge(f"{name} declares {declared} bytes inflated from {size} bytes ({declared / max(size, 1):.0f}:1), "
                       f"more than the {max_ratio:g}:1 MEDSYNTH_MAX_ZIP_RATIO allows (a zip bomb?); refused before "
                       "inflating it.")
    return declared


def _head(upload, n: int) -> bytes:
    if upload.data is not None:
        return upload.data[:n]
    with open(upload.path, "rb") as f:
        return f.read(n)


UPLOAD_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "required": ["file"],
        "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"},
                                "description": "DICOM Part 10 files, or zip archives of them; any number."}},
    }}},
}


@router.post("/{dataset}/dicom", status_code=status.HTTP_201_CREATED, response_model=DicomUploadPublic,
             openapi_extra={"requestBody": UPLOAD_BODY}, max_body_size=STREAMED,
             responses={207: {"model": DicomUploadPublic, "description": "Some series stored, others quarantined, refused, "
                                                                         "already present or stored without their mask."},
                        409: {"model": DicomUploadProblem, "description": "Nothing stored: every series is already in the dataset."},
                        413: {"description": "Over MEDSYNTH_MAX_DICOM_UPLOAD_BYTES, or a zip declares more than "
                                             "MEDSYNTH_MAX_ZIP_RATIO times its size (checked before it is inflated)."},
                        422: {"model": DicomUploadProblem, "description": "Nothing stored: no series could be (each one's reason in "
                                                                         "the list and in detail); or the upload itself is "
                                                                         "unusable (no files, two patients): detail alone."},
                        503: {"description": "Too many large uploads in progress (MEDSYNTH_MAX_CONCURRENT_LARGE_UPLOADS); "
                                             "Retry-After says when to try again."}})
async def upload_dicom(dataset: str, request: Request, settings: SettingsDep, store: StoreDep, bus: BusDep,
                       guard: GuardDep, principal: PrincipalDep, project: ProjectDep) -> JSONResponse:
    """Upload one patient's DICOM (files or zips, multipart field ``file``, repeated). Each series becomes
    a scan (or, for a time series the project splits, one per time point). Series are decided one by
    one: every series that can be stored is, whatever becomes of the others, all in one new dataset
    version. A series is stored whole or not at all: one unusable file of it refuses it, one instance
    that may show identity in its pixels quarantines it; a mask that cannot be used (overlapping
    segments, off the series' grid, two series referenced) leaves its series
    stored unlabeled, the mask's reason its warning. The answer lists every series with its fate, named
    by the files sent.

    **201** every series stored as sent; **207** some stored, others quarantined, refused, already
    present or stored without their mask (each one's ``fate``, ``reason``, ``warnings``); **409** nothing
    stored, every series already in the dataset; **422** nothing stored (``detail`` and the list say why),
    or the upload itself is unusable (no files, two patients, an unreadable zip)."""
    _before_body(dataset, guard, principal, project)
    deid = deidentifier(request, project)
    time_series = time_series_option(request, project)
    form = await _read(request, settings, related=False,
                       usage="the upload must be multipart/form-data with one or more `file` parts (DICOM files or zips).")
    try:
        async with upload_slots(request.app, settings).hold(form.received):  # its series will be in memory
            body, code = await run_in_threadpool(_ingest_upload, form, dataset, project, deid, time_series, settings, store, bus)
    except Exception as exc:
        INGESTED.labels(type(exc).__name__).inc()
        raise
    finally:
        form.close()
    if code < 400:
        return JSONResponse(body.model_dump(mode="json"), status_code=code)
    slug, title = ("already-present", "Every series already present") if code == 409 else ("nothing-stored", "No series stored")
    return problem_response(code, body.detail or title, request.url.path, type=problem_type(slug), title=title,
                            **body.model_dump(mode="json", exclude={"detail"}))


def _ingest_upload(form: FilesForm, dataset: str, project: str, deid: Deidentifier, time_series: TimeSeries, settings, store,
                   bus) -> tuple[DicomUploadPublic, int]:
    files = dicom_files(form, settings.max_dicom_upload_bytes, settings.max_zip_ratio)
    done = ingest_patient(store, dataset, files, deid, max_voxels=settings.max_voxels, time_series=time_series,
                          on_ingested=scan_announcer(bus, project, dataset))
    outcomes = done.outcomes
    try:
        record_outcomes(store, dataset, outcomes, done.labels, source="upload")
    except MedsynthError as exc:  # the manifest is the record of what was stored; this answer says the rest
        log.warning("DICOM upload to %s: outcomes not written down for GET .../dicom/series: %s", dataset, exc)
    INGESTED.labels("accepted").inc(len(done.stored))
    for error in done.errors:
        INGESTED.labels(error).inc()
    DICOM_INSTANCES.labels("upload", "ingested").inc(sum(o.instances for o in outcomes if o.fate in STORED))
    DICOM_INSTANCES.labels("upload", "quarantined").inc(len(done.quarantined))
    counts = {fate: sum(o.fate == fate for o in outcomes) for fate in FATES}
    if counts["stored"] + counts["stored-unlabeled"]:
        code, detail = (201 if counts["stored"] == len(outcomes) else 207), None
    else:
        code = 409 if counts["already-present"] == len(outcomes) else 422
        detail = f"nothing stored ({_counted(counts)}): " + "; ".join(o.reason or o.fate for o in outcomes)
    body = DicomUploadPublic(dataset=dataset, scans=[scan_public(dataset, entry, manifest) for entry, manifest in done.stored],
                             series=outcomes, counts=counts, quarantined=[Quarantined(name=n, reason=r) for n, r in done.quarantined],
                             detail=detail)
    return body, code


def _counted(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {fate}" for fate, n in counts.items() if n)


def _before_body(dataset: str, guard, principal, project: str) -> None:
    """The checks made before the body is read: the dataset name and the caller's upload rate."""
    try:
        check_name(dataset, "dataset name")
        guard.limit_upload(principal, project)
    except Exception as exc:
        exc.http_headers = {"Connection": "close"}  # the body stays unread
        raise


async def _read(request: Request, settings, *, related: bool, usage: str) -> FilesForm:
    declared = request.headers.get("content-length")
    try:
        return await read_files_form(request.headers.get("content-type", ""), int(declared) if declared and declared.isdigit() else None,
                                     request.stream(), file_limit=settings.max_dicom_upload_bytes,
                                     total_limit=settings.max_dicom_upload_bytes, usage=usage, related=related)
    except Exception as exc:
        INGESTED.labels(type(exc).__name__).inc()
        exc.http_headers = {"Connection": "close"}  # the rest of the body stays unread
        raise


# --- DICOMweb STOW-RS --------------------------------------------------------------------------------

#: The PS3.18 Store Instances Response Module in DICOM JSON (PS3.18 F.2): ReferencedSOPSequence
#: (0008,1199) of the instances stored, FailedSOPSequence (0008,1198) of those that were not.
STORE_INSTANCES_RESPONSE = {
    "type": "object",
    "description": "DICOM JSON (PS3.18 F.2) of the Store Instances Response Module: 00081199 ReferencedSOPSequence, "
                   "00081198 FailedSOPSequence (each item's 00081197 FailureReason).",
    "properties": {tag: {"type": "object", "properties": {"vr": {"type": "string", "enum": ["SQ"]},
                                                          "Value": {"type": "array", "items": {"type": "object"}}}}
                   for tag in ("00081199", "00081198")},
}

class DicomJSONResponse(JSONResponse):
    media_type = "application/dicom+json"


STOW_BODY = {
    "required": True,
    "content": {'multipart/related; type="application/dicom"': {"schema": {"type": "string", "format": "binary"}}},
}


@router.post("/{dataset}/dicomweb/studies", max_body_size=STREAMED, openapi_extra={"requestBody": STOW_BODY},
             response_class=DicomJSONResponse,
             responses={200: {"description": "Every instance stored (staged for its series); each series that began in "
                                             "this request can be stored as it stands.",
                              "content": {"application/dicom+json": {"schema": STORE_INSTANCES_RESPONSE}}},
                        202: {"description": "Some instances stored, others failed (FailedSOPSequence), or stored with "
                                             "WarningReason B000 (their series cannot be stored as it stands yet); the "
                                             "reasons are in the Warning header.",
                              "content": {"application/dicom+json": {"schema": STORE_INSTANCES_RESPONSE}}},
                        409: {"description": "No instance stored; each failure is in FailedSOPSequence with its reason.",
                              "content": {"application/dicom+json": {"schema": STORE_INSTANCES_RESPONSE}}},
                        415: {"description": 'Not multipart/related; type="application/dicom".'},
                        503: {"description": "Too many large uploads in progress (MEDSYNTH_MAX_CONCURRENT_LARGE_UPLOADS); "
                                             "Retry-After says when to try again."}})
async def stow_rs(dataset: str, request: Request, settings: SettingsDep, store: StoreDep,
                  guard: GuardDep, principal: PrincipalDep, project: ProjectDep) -> JSONResponse:
    """DICOMweb STOW-RS (PS3.18 10.5): store instances; the base URL of this dataset's DICOMweb service
    is ``/v1/datasets/{dataset}/dicomweb``. Instances are de-identified, then staged: a series becomes a
    scan when it is committed (``POST …/dicom/commit``) or after MEDSYNTH_DICOM_QUIET_S without new
    instances. The response is the PS3.18 store-instances dataset; reasons are also in a ``Warning:
    299`` header.

    A series that begins in this request is checked as it stands before the answer, so that nothing is
    acknowledged that is then rejected: one that cannot be stored whatever else comes (a mosaic without
    its CSA header, a time series the project refuses, ...) is rejected now and its instances fail
    (0110); one that more instances may complete (a missing slice, a mask whose images have not come)
    is acknowledged with WarningReason B000 and the reason; a mask that will not be used fails (its
    series is stored unlabeled). An instance that may show identity in its pixels quarantines its
    series: it and the series' instances in this request fail, and so do the series' later instances."""
    _before_body(dataset, guard, principal, project)  # a bad name is the request's fault, not each instance's
    kind = request.headers.get("content-type", "")
    if "multipart/related" in kind and 'type="application/dicom"' not in kind.replace("'", '"') and "type=application/dicom" not in kind:
        raise UnsupportedMediaType('STOW-RS takes multipart/related; type="application/dicom" (Part 10 instances); '
                                   f"got {kind!r}.")
    deid = deidentifier(request, project)
    time_series = time_series_option(request, project)
    form = await _read(request, settings, related=True, usage='STOW-RS takes multipart/related; type="application/dicom".')
    try:
        async with upload_slots(request.app, settings).hold(form.received):  # a new series is checked in memory
            body, code, warnings = await run_in_threadpool(_stow, form, dataset, deid, store, str(request.url), settings.max_voxels,
                                                           time_series)
    finally:
        form.close()
    headers = {"Warning": ", ".join(f'299 medsynth "{w}"' for w in warnings)} if warnings else None
    return DicomJSONResponse(body, status_code=code, headers=headers)


def _stow(form: FilesForm, dataset: str, deid: Deidentifier, store, url: str, max_voxels: int,
          time_series: TimeSeries) -> tuple[dict, int, list[str]]:
    failed, warnings = [], []
    staged: list[Received] = []
    fresh: dict[str, bool] = {}  # series → it begins in this request (nothing of it was staged before)
    for upload in form.files:
        part_type = form.part_types.get(upload.filename, "").split(";")[0].strip().lower()
        ds: Dataset | None = None
        try:
            if part_type != DICOM_MEDIA_TYPE:
                raise InvalidInput(f"{upload.filename} is {part_type or 'untyped'}, not {DICOM_MEDIA_TYPE}.")
            ds = read_instance(upload.read(), upload.filename)
            received = receive(ds, upload.filename, deid)
            if received.series_uid not in fresh:
                fresh[received.series_uid] = not staged_already(store, dataset, received.series_uid)
            if received.quarantined:
                quarantine(store, dataset, received, source="stow-rs")
                raise SeriesQuarantined(received.quarantined)
            stage(store, dataset, received, source="stow-rs")
            staged.append(received)
            DICOM_INSTANCES.labels("stow-rs", "staged").inc()
        except MedsynthError as exc:
            code = CANNOT_UNDERSTAND if ds is None else PROCESSING_FAILURE
            failed.append(_failure(ds, code, deid))
            warnings.append(_quoted(str(exc)))
            DICOM_INSTANCES.labels("stow-rs", "quarantined" if isinstance(exc, SeriesQuarantined) else "failed").inc()
    stored = []
    for series in dict.fromkeys(r.series_uid for r in staged):
        ours = [r for r in staged if r.series_uid == series]
        verdict, why = _verdict(store, dataset, series, ours, fresh[series], max_voxels, time_series)
        named = ours[0].label.split(" of ", 1)[-1]  # "series 7"
        if verdict == "refused":
            warnings.append(_quoted(f"{named}: not stored: {why}"))
        elif verdict == "pending":
            warnings.append(_quoted(f"{named}: staged, but it cannot be stored as it stands ({why}); unless the rest of it "
                                    "comes within MEDSYNTH_DICOM_QUIET_S it will be rejected (GET .../dicom/series)"))
        elif verdict == "present":
            warnings.append(_quoted(f"{named}: already in the dataset: {why}"))
        elif why:
            warnings.append(_quoted(f"{named}: {why}"))
        for r in ours:
            if verdict == "refused" or (why and verdict == "ok" and is_mask(r.dataset)):
                failed.append(_failure(r.dataset, PROCESSING_FAILURE, deid, deidentified=True))
            else:
                stored.append(_reference(r.dataset, f"{url}/{r.dataset.StudyInstanceUID}", COERCED if verdict == "pending" else None))
    body: dict = {}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": stored}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    code = 200 if not warnings else 202 if stored else 409
    return body, code, warnings


def _quoted(text: str) -> str:
    """``text`` fit for a Warning header's quoted string (latin-1: an en dash or an ellipsis spelled out)."""
    text = text.replace('"', "'").replace("\r", " ").replace("\n", " ").replace("\u2026", "...").replace("\u2013", "-")
    return text.encode("latin-1", "replace").decode("latin-1")


def _verdict(store, dataset: str, series: str, ours: list[Received], fresh: bool, max_voxels: int,
             time_series: TimeSeries) -> tuple[Assessment, str | None]:
    """What this request may say of its instances of ``series``: ``refused`` when the series is
    quarantined meanwhile; for a series that begins in this request, :func:`assess` (one found that
    cannot be stored is rejected now); a series begun earlier is decided when committed (``ok``)."""
    if reason := quarantine_reason(store, dataset, series):
        return "refused", f"its series is quarantined ({reason})"
    if not fresh:
        return "ok", None
    verdict, why = assess(store, dataset, ours, max_voxels=max_voxels, time_series=time_series)
    if verdict == "refused":
        reject(store, dataset, series, why or "refused")
    return verdict, why


def _reference(ds: Dataset, study_url: str, warning: int | None = None) -> dict:
    item = {"00081150": {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
            "00081155": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]},
            "00081190": {"vr": "UR", "Value": [study_url]}}
    if warning is not None:
        item["00081196"] = {"vr": "US", "Value": [warning]}  # WarningReason
    return item


def _failure(ds: Dataset | None, code: int, deid: Deidentifier, *, deidentified: bool = False) -> dict:
    """A FailedSOPSequence item; the instance UID is given as de-identified (never the original)."""
    item: dict = {"00081197": {"vr": "US", "Value": [code]}}
    if ds is not None and "SOPClassUID" in ds:
        item["00081150"] = {"vr": "UI", "Value": [str(ds.SOPClassUID)]}
    if ds is not None and "SOPInstanceUID" in ds:
        uid = str(ds.SOPInstanceUID)
        item["00081155"] = {"vr": "UI", "Value": [uid if deidentified else deid.uid(uid)]}
    return item


# --- staged series -------------------------------------------------------------------------------------


@router.post("/{dataset}/dicom/commit", response_model=SeriesCommittedPublic)
async def commit_series(dataset: str, request: Request, settings: SettingsDep, store: StoreDep, bus: BusDep, project: ProjectDep,
                        series: str | None = Query(None, description="One staged series (its de-identified UID); default all."),
                        ) -> SeriesCommittedPublic:
    """Assemble staged series now instead of waiting for the quiet period; each record says
    ``ingested`` (with the scan id; fate ``stored``, or ``stored-unlabeled`` with a warning when the mask
    sent with it was not usable), ``rejected`` (with the reason) or ``quarantined``."""
    done = await run_in_threadpool(commit, store, dataset, series, max_voxels=settings.max_voxels,
                                   on_ingested=scan_announcer(bus, project, dataset),
                                   time_series=time_series_option(request, project))
    return SeriesCommittedPublic(dataset=dataset, series=done)


@router.get("/{dataset}/dicom/series", response_model=SeriesListPublic)
async def list_series(dataset: str, store: StoreDep, page: PageDep,
                      state: Literal["staged", "ingested", "rejected", "quarantined"] | None = None,
                      fate: Fate | None = None) -> SeriesListPublic:
    """Every series sent to this dataset — by REST upload, STOW-RS or C-STORE — and what became of it:
    its fate (stored, stored-unlabeled, quarantined, refused, already-present; none while staged, unless
    already quarantined) with the reason or warnings; named by SeriesNumber and modality, its instances
    by number (``instance 3 of series 7``). In the order of the series' (de-identified) UIDs, a page at a time."""

    def read() -> tuple[list[SeriesRecord], str | None]:
        return page.take((uid, r) for uid, r in series_records(store, dataset, after=page.after)
                         if (state is None or r.state == state) and (fate is None or r.fate == fate))

    found, cursor = await run_in_threadpool(read)
    return SeriesListPublic(dataset=dataset, series=found, next_cursor=cursor)
