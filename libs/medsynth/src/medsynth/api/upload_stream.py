"""Reading a scan upload (multipart/form-data) as it streams in, instead of after the whole body has
been spooled: a running byte cap on the body (so a chunked upload, which declares no length, is cut
off as early as one that declares too much), each file written to a temporary file on disk with its
SHA-256 computed on the way, and the NIfTI header of each file checked as soon as its first bytes
(inflated, for ``.nii.gz``) arrive — a wrong or oversized file is refused before the rest is read.
"""

from __future__ import annotations

import hashlib
import tempfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from medsynth.core.errors import InvalidInput, TooLarge
from medsynth.datasets.ingest import Upload
from medsynth.io.nifti import GZIP_MAGIC, NIFTI2_HEADER_SIZE, check_header

MULTIPART_OVERHEAD = 64 * 1024
FIELD_LIMIT = 1024
FILE_FIELDS = {"image": "image", "label": "label map"}
_PROBE_BYTES = NIFTI2_HEADER_SIZE + 4


@dataclass
class _FilePart:
    what: str
    filename: str
    path: Path
    limit: int
    max_voxels: int
    size: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    head: bytearray = field(default_factory=bytearray)
    inflater: zlib._Decompress | None = None
    checked: bool = False

    def __post_init__(self) -> None:
        self.file = open(self.path, "wb")  # noqa: SIM115 - closed in close()

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise TooLarge(f"{self.what} is larger than the {self.limit}-byte limit.")
        self.digest.update(data)
        self.file.write(data)
        if not self.checked:
            self._probe(data)

    def _probe(self, data: bytes) -> None:
        """Feed the first bytes to the header check (through zlib for gzip)."""
        if self.inflater is None and not self.head and data[:2] == GZIP_MAGIC:
            self.inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        if self.inflater is not None:
            try:
                data = self.inflater.decompress(data, _PROBE_BYTES)
            except zlib.error as exc:
                raise InvalidInput(f"{self.what} is not a readable NIfTI file: corrupt gzip data ({exc}).") from exc
        self.head += data
        if len(self.head) >= _PROBE_BYTES:
            self.finish_probe()

    def finish_probe(self) -> None:
        if not self.checked:
            self.checked = True
            check_header(bytes(self.head[:_PROBE_BYTES]), self.what, self.max_voxels)

    def close(self) -> None:
        self.file.close()

    def upload(self) -> Upload:
        return Upload(self.filename, path=self.path, sha256=self.digest.hexdigest())


@dataclass
class ScanForm:
    """What a scan upload carried: the patient id and the files, on disk in ``folder``."""

    folder: tempfile.TemporaryDirectory
    patient_id: str | None = None
    image: Upload | None = None
    label: Upload | None = None
    received: int = 0

    def close(self) -> None:
        self.folder.cleanup()


async def read_scan_form(content_type: str, declared: int | None, body: AsyncIterator[bytes], *, file_limit: int, max_voxels: int) -> ScanForm:
    """Parse the upload from ``body`` chunk by chunk; raises :class:`TooLarge` or :class:`InvalidInput`
    the moment the body, a file or a header says so. The caller must :meth:`ScanForm.close` it."""
    mime, options = parse_options_header(content_type or "")
    if mime != b"multipart/form-data" or b"boundary" not in options:
        raise InvalidInput("the upload must be multipart/form-data with fields patient_id, image and optional label.")
    body_limit = 2 * file_limit + MULTIPART_OVERHEAD
    if declared is not None and declared > body_limit:
        raise TooLarge(f"upload of {declared} bytes exceeds the limit of {body_limit} bytes.")
    form = ScanForm(tempfile.TemporaryDirectory(prefix="medsynth-upload-"))
    state: dict[str, object] = {"headers": {}, "part": None, "field": None}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["name"] = data[start:end].decode("latin-1").lower()

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["headers"][state["name"]] = state["headers"].get(state["name"], "") + data[start:end].decode("latin-1")

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state["headers"].get("content-disposition", ""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        filename = disp.get(b"filename")
        if name in FILE_FIELDS and filename:
            path = Path(form.folder.name) / name
            state["part"] = _FilePart(FILE_FIELDS[name], filename.decode("utf-8", "replace"), path, file_limit, max_voxels)
        elif name == "patient_id":
            state["field"] = bytearray()
        state["current"] = name

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if (part := state["part"]) is not None:
            part.write(chunk)
        elif (value := state["field"]) is not None:
            value += chunk
            if len(value) > FIELD_LIMIT:
                raise InvalidInput(f"patient_id is longer than {FIELD_LIMIT} bytes.")

    def on_part_end() -> None:
        if (part := state["part"]) is not None:
            part.finish_probe()  # a file shorter than a header is refused here
            part.close()
            if part.size:
                setattr(form, "image" if part.what == "image" else "label", part.upload())
        elif (value := state["field"]) is not None:
            form.patient_id = value.decode("utf-8", "replace")
        state.update(headers={}, part=None, field=None)

    parser = MultipartParser(options[b"boundary"], {
        "on_header_field": on_header_field, "on_header_value": on_header_value, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end,
    })
    try:
        async for chunk in body:
            form.received += len(chunk)
            if form.received > body_limit:
                raise TooLarge(f"upload exceeds the limit of {body_limit} bytes.")
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        form.close()
        raise InvalidInput(f"the upload is not well-formed multipart/form-data: {exc}") from None
    except BaseException:
        if (part := state.get("part")) is not None:
            part.close()
        form.close()
        raise
    return form
