"""Reading a scan upload (multipart/form-data) as it streams in, instead of after the whole body has
been spooled: a running byte cap on the body (so a chunked upload, which declares no length, is cut
off as early as one that declares too much), each file written to a temporary file on disk with its
SHA-256 computed on the way, and the NIfTI header of each file checked as soon as its first bytes
(inflated, for ``.nii.gz``) arrive — a wrong or oversized file is refused before the rest is read.

Once received, a large upload waits for one of the process's :class:`UploadSlots` before it is checked
and stored, as that work holds its volume in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from medsynth.core.errors import Busy, InvalidInput, TooLarge, UnsupportedMediaType
from medsynth.datasets.ingest import Upload
from medsynth.io.nifti import GZIP_MAGIC, NIFTI2_HEADER_SIZE, check_header

MULTIPART_OVERHEAD = 64 * 1024
FIELD_LIMIT = 16 * 1024  # a form field (patient_id; label_names of a few hundred classes)
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
    probe: bool = True  # check a NIfTI header in the first bytes

    def __post_init__(self) -> None:
        self.file = open(self.path, "wb")  # noqa: SIM115 - closed in close()

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise TooLarge(f"{self.what} is larger than the {self.limit}-byte limit.")
        self.digest.update(data)
        self.file.write(data)
        if self.probe and not self.checked:
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
        if self.probe and not self.checked:
            self.checked = True
            check_header(bytes(self.head[:_PROBE_BYTES]), self.what, self.max_voxels)

    def close(self) -> None:
        self.file.close()

    def upload(self) -> Upload:
        return Upload(self.filename, path=self.path, sha256=self.digest.hexdigest())


@dataclass
class ScanForm:
    """What a scan upload carried: the patient id, the label names (JSON, as sent) and the files, on
    disk in ``folder``."""

    folder: tempfile.TemporaryDirectory
    patient_id: str | None = None
    label_names: str | None = None
    image: Upload | None = None
    label: Upload | None = None
    received: int = 0

    def close(self) -> None:
        self.folder.cleanup()


async def read_scan_form(content_type: str, declared: int | None, body: AsyncIterator[bytes], *, file_limit: int, max_voxels: int) -> ScanForm:
    """Parse the upload from ``body`` chunk by chunk; raises :class:`TooLarge` or :class:`InvalidInput`
    the moment the body, a file or a header says so. The caller must :meth:`ScanForm.close` it."""
    form = ScanForm(tempfile.TemporaryDirectory(prefix="medsynth-upload-"))

    def open_file(name: str, filename: str) -> _FilePart | None:
        if name not in FILE_FIELDS:
            return None
        return _FilePart(FILE_FIELDS[name], filename, Path(form.folder.name) / name, file_limit, max_voxels)

    def on_file(part: _FilePart) -> None:
        setattr(form, "image" if part.what == "image" else "label", part.upload())

    def on_field(name: str, value: str) -> None:
        if name == "patient_id":
            form.patient_id = value
        elif name == "label_names":
            form.label_names = value

    usage = "the upload must be multipart/form-data with fields patient_id, image and optional label and label_names."
    form.received = await _parse(content_type, declared, body, 2 * file_limit + MULTIPART_OVERHEAD, usage,
                                 open_file, on_file, on_field, form.close)
    return form


@dataclass
class FilesForm:
    """Every file of a multipart upload, on disk in ``folder``, in the order they came, and its fields."""

    folder: tempfile.TemporaryDirectory
    files: list[Upload] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    part_types: dict[str, str] = field(default_factory=dict)  # multipart/related: file name → the part's Content-Type
    received: int = 0

    def close(self) -> None:
        self.folder.cleanup()


async def read_files_form(content_type: str, declared: int | None, body: AsyncIterator[bytes], *, file_limit: int,
                          total_limit: int, usage: str, related: bool = False) -> FilesForm:
    """Parse a multipart body of any number of files (each capped at ``file_limit``, the body at
    ``total_limit``) streamed to disk. multipart/form-data, or with ``related`` multipart/related, whose
    every part is a file (its name is its position; its Content-Type is kept as the upload's
    ``content_type``). The caller must :meth:`FilesForm.close` it."""
    form = FilesForm(tempfile.TemporaryDirectory(prefix="medsynth-upload-"))

    def open_file(name: str, filename: str) -> _FilePart:
        path = Path(form.folder.name) / f"{len(form.files):06d}"
        if related:
            form.part_types[filename] = name
        return _FilePart(f"file {filename!r}", filename, path, file_limit, 0, probe=False)

    def on_field(name: str, value: str) -> None:
        form.fields[name] = value

    form.received = await _parse(content_type, declared, body, total_limit, usage, open_file,
                                 lambda part: form.files.append(part.upload()), on_field, form.close,
                                 mime=b"multipart/related" if related else b"multipart/form-data")
    return form


async def _parse(content_type: str, declared: int | None, body: AsyncIterator[bytes], body_limit: int, usage: str,
                 open_file: Callable[[str, str], _FilePart | None], on_file: Callable[[_FilePart], None],
                 on_field: Callable[[str, str], None], cleanup: Callable[[], None], *,
                 mime: bytes = b"multipart/form-data") -> int:
    """Stream ``body`` through a multipart parser: file parts into :class:`_FilePart` s, other fields
    (at most :data:`FIELD_LIMIT` bytes) to ``on_field``. Returns the bytes received."""
    got, options = parse_options_header(content_type or "")
    if got != mime or b"boundary" not in options:
        raise (UnsupportedMediaType if mime == b"multipart/related" else InvalidInput)(usage)
    related = mime == b"multipart/related"
    parts = 0
    if declared is not None and declared > body_limit:
        raise TooLarge(f"upload of {declared} bytes exceeds the limit of {body_limit} bytes.")
    state: dict[str, object] = {"headers": {}, "part": None, "field": None}
    received = 0

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["name"] = data[start:end].decode("latin-1").lower()

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["headers"][state["name"]] = state["headers"].get(state["name"], "") + data[start:end].decode("latin-1")

    def on_headers_finished() -> None:
        nonlocal parts
        _, disp = parse_options_header(state["headers"].get("content-disposition", ""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        filename = disp.get(b"filename")
        parts += 1
        if related:
            state["part"] = open_file(state["headers"].get("content-type", "").strip(), f"part {parts}")
        elif filename:
            state["part"] = open_file(name, filename.decode("utf-8", "replace"))
        else:
            state["field"] = bytearray()
        state["current"] = name

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if (part := state["part"]) is not None:
            part.write(chunk)
        elif (value := state["field"]) is not None:
            value += chunk
            if len(value) > FIELD_LIMIT:
                raise InvalidInput(f"{state['current']} is longer than {FIELD_LIMIT} bytes.")

    def on_part_end() -> None:
        if (part := state["part"]) is not None:
            part.finish_probe()  # a file shorter than a header is refused here
            part.close()
            if part.size:
                on_file(part)
        elif (value := state["field"]) is not None:
            on_field(state["current"], value.decode("utf-8", "replace"))
        state.update(headers={}, part=None, field=None)

    parser = MultipartParser(options[b"boundary"], {
        "on_header_field": on_header_field, "on_header_value": on_header_value, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end,
    })
    try:
        async for chunk in body:
            received += len(chunk)
            if received > body_limit:
                raise TooLarge(f"upload exceeds the limit of {body_limit} bytes.")
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        cleanup()
        raise InvalidInput(f"the upload is not well-formed multipart/form-data: {exc}") from None
    except BaseException:
        if (part := state.get("part")) is not None:
            part.close()
        cleanup()
        raise
    return received


class UploadSlots:
    """At most ``slots`` large uploads (``large_bytes`` or more) of one process are checked and stored
    at once, as each holds its volume in memory; another waits up to ``wait_s`` for a slot, then is
    refused with :class:`Busy` (503, Retry-After). Smaller uploads never wait."""

    def __init__(self, slots: int, large_bytes: int, wait_s: float) -> None:
        self.slots, self.large_bytes, self.wait_s = slots, large_bytes, wait_s
        self._free = asyncio.Semaphore(slots)

    @asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """Hold a slot, if an upload of ``size`` bytes needs one, while the body of the ``with`` runs."""
        if size < self.large_bytes:
            yield
            return
        if self._free.locked():
            if self.wait_s <= 0:
                raise self._busy(size)
            try:
                await asyncio.wait_for(self._free.acquire(), timeout=self.wait_s)
            except TimeoutError:
                raise self._busy(size) from None
        else:
            await self._free.acquire()  # free: taken at once
        try:
            yield
        finally:
            self._free.release()

    def _busy(self, size: int) -> Busy:
        waited = f" after waiting {self.wait_s:g} s" if self.wait_s > 0 else ""
        return Busy(f"this upload of {size} bytes is refused{waited}: the {self.slots} slot(s) for uploads of "
                    f"{self.large_bytes} bytes or more (MEDSYNTH_MAX_CONCURRENT_LARGE_UPLOADS) are taken; try again later.",
                    retry_after_s=max(5.0, self.wait_s))


def upload_slots(app, settings) -> UploadSlots:
    """The :class:`UploadSlots` of ``app`` (one per process), made on first use from ``settings``."""
    state = app.state.__dict__
    if "upload_slots" not in state:
        state["upload_slots"] = UploadSlots(settings.max_concurrent_large_uploads, settings.large_upload_bytes,
                                            settings.large_upload_wait_s)
    return state["upload_slots"]
