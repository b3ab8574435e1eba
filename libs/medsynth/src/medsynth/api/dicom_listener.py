"""The ingest service's DICOM side: a C-STORE SCP (with C-ECHO) a PACS or modality pushes studies to,
and the committer that assembles staged series once they have been quiet.

Only the calling AE titles in MEDSYNTH_DICOM_PEERS may associate (others are rejected at association);
each peer's instances go to its configured project and dataset. Every instance is de-identified in
memory and staged (:mod:`medsynth.datasets.dicom_staging`); an unusable one is answered with a DIMSE
failure status and an ErrorComment naming the problem.

DIMSE answers each instance as it comes, before its series is complete: what becomes of the series
(stored, stored unlabeled, refused, quarantined) is decided once it is quiet and recorded where
``GET /v1/datasets/{d}/dicom/series`` shows it. An instance that may show identity in its pixels fails
and quarantines its series, so that the series' later instances fail too rather than be acknowledged.
"""

from __future__ import annotations

import logging
import threading

from pydicom.dataset import Dataset
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from medsynth.core.errors import InvalidInput, MedsynthError
from medsynth.core.settings import DicomPeer, Settings
from medsynth.datasets.dicom_ingest import receive
from medsynth.datasets.dicom_staging import SeriesQuarantined, commit_quiet, quarantine, stage
from medsynth.dicom.deid import Deidentifier, deid_policy
from medsynth.dicom.series import check_instance
from medsynth.store.projects import Projects, project_store
from medsynth.runtime.telemetry import DICOM_INSTANCES

log = logging.getLogger(__name__)

SUCCESS = 0x0000
CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700
ERROR_COMMENT_MAX = 64


class StoreSCP:
    """The C-STORE listener: ``start()`` binds MEDSYNTH_DICOM_HOST:MEDSYNTH_DICOM_PORT, ``stop()`` ends it."""

    def __init__(self, settings: Settings, root_store) -> None:
        self.settings = settings
        self.root = root_store
        self.peers: dict[str, DicomPeer] = {p.ae_title.strip(): p for p in settings.dicom_peers}
        self._deid: dict[str, Deidentifier] = {}
        self._lock = threading.Lock()
        self.server = None

    def start(self) -> None:
        ae = AE(ae_title=self.settings.dicom_ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        if not self.peers:
            raise ValueError("a C-STORE listener needs MEDSYNTH_DICOM_PEERS (an empty list would admit every AE title)")
        ae.require_calling_aet = list(self.peers)  # any other calling AE title is rejected at association
        ae.maximum_pdu_size = 0
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: SUCCESS)]
        self.server = ae.start_server((self.settings.dicom_host, self.settings.dicom_port), block=False, evt_handlers=handlers)
        log.info("DICOM C-STORE SCP %s listening on %s:%d for %s", self.settings.dicom_ae_title, self.settings.dicom_host,
                 self.settings.dicom_port, ", ".join(self.peers) or "no peers")

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def _deidentifier(self, project: str) -> Deidentifier:
        with self._lock:
            if project not in self._deid:
                self._deid[project] = Deidentifier(deid_policy(self.root, project))
            return self._deid[project]

    def _on_store(self, event) -> Dataset | int:
        calling = event.assoc.requestor.ae_title.strip()
        peer = self.peers.get(calling)
        if peer is None:  # not reachable with require_calling_aet, kept as a second line
            return _failure(CANNOT_UNDERSTAND, f"calling AE {calling} is not allowed")
        name = f"C-STORE from {calling}"
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            check_instance(ds, name)
            received = receive(ds, name, self._deidentifier(peer.project))
            store = project_store(self.root, peer.project)
            if received.quarantined:
                quarantine(store, peer.dataset, received, source=f"c-store:{calling}")
                DICOM_INSTANCES.labels("c-store", "quarantined").inc()
                return _failure(CANNOT_UNDERSTAND, "quarantined: may show identity in its pixels")
            stage(store, peer.dataset, received, source=f"c-store:{calling}")
        except SeriesQuarantined:
            DICOM_INSTANCES.labels("c-store", "quarantined").inc()
            return _failure(CANNOT_UNDERSTAND, "quarantined: its series may show identity")
        except InvalidInput as exc:
            DICOM_INSTANCES.labels("c-store", "failed").inc()
            return _failure(CANNOT_UNDERSTAND, str(exc))
        except MedsynthError as exc:
            DICOM_INSTANCES.labels("c-store", "failed").inc()
            log.warning("C-STORE from %s not staged: %s", calling, exc)
            return _failure(OUT_OF_RESOURCES, "could not store the instance; try again")
        except Exception as exc:  # noqa: BLE001 - a dataset pynetdicom cannot decode, and the like
            DICOM_INSTANCES.labels("c-store", "failed").inc()
            return _failure(CANNOT_UNDERSTAND, f"{type(exc).__name__}: {exc}")
        DICOM_INSTANCES.labels("c-store", "staged").inc()
        return SUCCESS


def _failure(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment.replace("\\", "/")[:ERROR_COMMENT_MAX]
    return status


def run_quiet_committer(settings: Settings, root_store, bus, stop: threading.Event) -> None:
    """Assemble staged series that have had no new instance for MEDSYNTH_DICOM_QUIET_S (every project),
    until ``stop``; a failed round is logged and tried again."""
    from medsynth.api.routes.scans import scan_announcer

    every = max(0.5, min(5.0, settings.dicom_quiet_s / 3))
    while not stop.wait(every):
        try:
            stores = {name: project_store(root_store, name) for name in Projects(root_store).names()}
            commit_quiet(stores, settings.dicom_quiet_s, max_voxels=settings.max_voxels,
                         on_ingested=lambda project, dataset, entry, manifest: scan_announcer(bus, project, dataset)(entry, manifest),
                         time_series=lambda project: Projects(root_store).get(project).dicom.time_series)
        except Exception:  # noqa: BLE001 - the committer must outlive a store hiccup
            log.exception("assembling quiet DICOM series failed; trying again")
