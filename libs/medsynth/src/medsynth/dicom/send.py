"""C-STORE SCU: send DICOM instances (a cohort's images and SEGs) to a DICOM node."""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from medsynth.core.errors import PeerUnavailable

SUCCESS = 0x0000
ACSE_TIMEOUT_S = 10
DIMSE_TIMEOUT_S = 60


@dataclass
class SendResult:
    sent: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, status or reason)


def send_instances(instances: Iterable[tuple[str, bytes]], *, host: str, port: int, called_ae: str, calling_ae: str) -> SendResult:
    """C-STORE every ``(name, Part 10 bytes)`` over one association; raises :class:`PeerUnavailable`
    when the node cannot be reached or refuses the association."""
    items = [(name, pydicom.dcmread(io.BytesIO(data))) for name, data in instances]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = ACSE_TIMEOUT_S, DIMSE_TIMEOUT_S, DIMSE_TIMEOUT_S
    for sop_class in sorted({str(ds.SOPClassUID) for _, ds in items}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "did not answer" if not assoc.is_aborted else "aborted"
        raise PeerUnavailable(f"DICOM node {called_ae}@{host}:{port} {why}.")
    result = SendResult()
    try:
        for name, ds in items:
            status = assoc.send_c_store(ds)
            code = int(getattr(status, "Status", -1)) if status else -1
            if code == SUCCESS:
                result.sent += 1
            else:
                result.failed.append((name, f"status 0x{code:04X}" if code >= 0 else "no response"))
    finally:
        assoc.release()
    return result
