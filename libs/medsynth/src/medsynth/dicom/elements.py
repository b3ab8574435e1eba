"""Part 10 bytes → a pydicom dataset of chosen top-level elements, walking only element headers.

``pydicom.dcmread(..., specific_tags=...)`` keeps only the elements asked for but still reads every
element's header through its Python generator: about 0.6 ms of CPU for one of dcm_qa_nih's GE files
(30 kB, 340 elements), more than everything else assembling a series costs (the full parse: 1.4 ms).
:func:`read_selected` walks the same bytes with one ``struct`` unpack per element header and keeps
the elements asked for as pydicom's own raw elements (:class:`~pydicom.dataelem.RawDataElement`):
0.15 ms, the dataset built. The dataset it returns is the one ``dcmread(BytesIO(data),
specific_tags=tags)`` returns, element for element, values converted by pydicom when first read.
Measured beside it, on the same files: GDCM (python-gdcm ``Reader.Read``, or ``ReadSelectedTags``)
0.63-0.69 ms, no faster than pydicom; highdicom's volume API (``get_volume_from_series``) needs
pydicom's full parse and adds about 1.9 ms a slice.

It walks the common encodings only: little endian, explicit or implicit VR, as the file meta
information's TransferSyntaxUID says. For anything else (no ``DICM`` prefix, no transfer syntax, big
endian, deflated, a command set, an unknown VR, an element or item that runs past the end, a dataset
that switches VR encoding) it returns None, and the caller reads the bytes with pydicom, which
decides what they are (and names what is wrong with them).
"""

from __future__ import annotations

import functools
import io
import struct
from collections.abc import Sequence

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement, empty_value_for_VR
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian, PrivateTransferSyntaxes
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR
from pydicom.values import convert_string

# An element header read as one little-endian uint32 (element << 16 | group: the two halves of the tag
# swapped, so that no arithmetic is spent on elements passed over), then (explicit VR) two VR bytes and
# a 16-bit length, or (implicit VR) a 32-bit length.
_EXPLICIT = struct.Struct("<I2sH").unpack_from
_IMPLICIT = struct.Struct("<II").unpack_from
_U32 = struct.Struct("<I").unpack_from
_VRS = {vr.encode("ascii"): str(vr) for vr in VR if len(vr) == 2}
#: An explicit VR → the size of its element's header (VR's with a 32-bit length have 2 reserved bytes).
_HEADER = {raw: 12 if vr in EXPLICIT_VR_LENGTH_32 else 8 for raw, vr in _VRS.items()}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xE000FFFE, 0xE00DFFFE, 0xE0DDFFFE  # swapped, as above
_CHARSET = 0x00080005


class _Unwalkable(Exception):
    """The bytes are outside what this reader walks: pydicom reads them."""


def _swap(tag: int) -> int:
    return (tag & 0xFFFF) << 16 | tag >> 16


def read_selected(data: bytes, tags: Sequence[int | str]) -> FileDataset | None:
    """The dataset ``pydicom.dcmread(io.BytesIO(data), specific_tags=tags)`` reads (with its file meta
    information and SpecificCharacterSet, as pydicom keeps them), or None when ``data`` is outside what
    this reader walks (see the module's description): read it with pydicom then. ``tags`` are tags or
    keywords, as pydicom takes them."""
    try:
        return _read(data, _wanted(tuple(tags)))
    except (_Unwalkable, struct.error, RecursionError):  # RecursionError: sequences nested past Python's stack
        return None


@functools.lru_cache(maxsize=32)
def _wanted(tags: tuple[int | str, ...]) -> frozenset[int]:
    return frozenset(_swap(int(Tag(t))) for t in (*tags, _CHARSET))


def _read(data: bytes, wanted: frozenset[int]) -> FileDataset:
    if len(data) < 140 or data[128:132] != b"DICM":
        raise _Unwalkable
    found, pos = _meta(data)
    if not found:
        raise _Unwalkable
    meta = _elements(data, found, False)
    syntax_element = meta.get(BaseTag(0x00020010))
    syntax = (syntax_element.value or b"").decode("latin-1").rstrip("\x00 ") if syntax_element is not None else ""  # as pydicom
    if not syntax or syntax in (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian) or syntax in PrivateTransferSyntaxes:
        raise _Unwalkable  # pydicom guesses, reads big endian, or inflates first
    implicit = syntax == ImplicitVRLittleEndian
    if len(data) - pos < 8 or data[pos:pos + 2] == b"\x00\x00":
        raise _Unwalkable  # an empty dataset, or a command set (group 0000)
    vr = data[pos + 4:pos + 6]
    if (not (0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B)) != implicit:
        raise _Unwalkable  # encoded otherwise than its transfer syntax says: pydicom warns and switches
    found = {}
    if implicit:
        _implicit(data, pos, wanted, found)
    else:
        _explicit(data, pos, wanted, found)
    file_meta = FileMetaDataset(meta)
    file_meta.set_original_encoding(False, True, default_encoding)
    elements = _elements(data, found, implicit)
    ds = FileDataset(io.BytesIO(data), elements, data[:128], file_meta, implicit, True)
    charset = elements.get(_CHARSET)
    ds.set_original_encoding(implicit, True, default_encoding if charset is None else list(_encodings(charset.value or b"")))
    return ds


@functools.lru_cache(maxsize=64)
def _encodings(charset: bytes) -> tuple[str, ...]:
    """What pydicom makes of a raw SpecificCharacterSet (``Dataset._character_set``; an empty one too),
    the same for every instance of a series: converted once."""
    return tuple(convert_encodings(convert_string(charset, True)))


def _meta(data: bytes) -> tuple[dict, int]:
    """The file meta information's elements (group 0002, explicit VR, after the ``DICM`` prefix) as
    :func:`_explicit` notes them, and where the dataset starts."""
    found: dict[int, tuple[bytes, int, int, int]] = {}
    pos, end = 132, len(data)
    while end - pos >= 8:
        key, vr, length = _EXPLICIT(data, pos)
        if key & 0xFFFF != 2:
            break
        size = _HEADER.get(vr)
        if size is None:
            raise _Unwalkable  # pydicom retries it as implicit VR
        at = pos + size
        if size == 12:
            length = _U32(data, pos + 8)[0]
            if length == _UNDEFINED:
                raise _Unwalkable
        pos = at + length
        found[key] = (vr, length, at, pos)
    if pos > end:
        raise _Unwalkable
    return found, pos


def _explicit(data: bytes, pos: int, wanted: frozenset[int], found: dict) -> None:
    """Walk explicit-VR elements from ``pos`` to the end of ``data``, noting in ``found`` where those of
    ``wanted`` are: swapped tag → (VR bytes, length, value start, value end).

    The loop every element of every instance goes through: a third of reading a series."""
    end = len(data)
    header, unpack, u32 = _HEADER, _EXPLICIT, _U32
    while end - pos >= 8:
        key, vr, length = unpack(data, pos)
        size = header.get(vr)
        if size == 12:
            at = pos + 12
            length = u32(data, pos + 8)[0]
            if length == _UNDEFINED:
                value_end, pos = _undefined(data, at, False)
                if key in wanted:
                    found[key] = (vr, length, at, value_end)
                continue
        elif size is None:
            if key == _ITEM_END:
                return  # pydicom ends a top-level dataset there too
            raise _Unwalkable  # not a VR: pydicom guesses (implicit VR in an explicit dataset, or a VR it does not know)
        else:
            at = pos + 8
        pos = at + length
        if key in wanted:
            found[key] = (vr, length, at, pos)
    if pos > end:
        raise _Unwalkable  # truncated: pydicom keeps the short value; let it


def _implicit(data: bytes, pos: int, wanted: frozenset[int], found: dict) -> None:
    """:func:`_explicit` for implicit VR (no VR: ``None`` in ``found``)."""
    end = len(data)
    while end - pos >= 8:
        key, length = _IMPLICIT(data, pos)
        if key == _ITEM_END:
            return
        at = pos + 8
        if length == _UNDEFINED:
            value_end, pos = _undefined(data, at, True)
        else:
            value_end = pos = at + length
        if key in wanted:
            found[key] = (None, length, at, value_end)
    if pos > end:
        raise _Unwalkable


def _walk_item(data: bytes, pos: int, implicit: bool) -> int:
    """Walk the elements of an item of undefined length from ``pos``; returns where its delimiter ends."""
    end = len(data)
    while end - pos >= 8:
        if implicit:
            key, length = _IMPLICIT(data, pos)
            at = pos + 8
        else:
            key, vr, length = _EXPLICIT(data, pos)
            size = _HEADER.get(vr)
            if size is None:
                if key == _ITEM_END:
                    return pos + 8
                raise _Unwalkable  # an item in implicit VR within explicit: pydicom reads it so
            at = pos + size
            if size == 12:
                length = _U32(data, pos + 8)[0]
        if key == _ITEM_END:
            return pos + 8
        pos = _undefined(data, at, implicit)[1] if length == _UNDEFINED else at + length
    raise _Unwalkable  # an item of undefined length without its delimiter


def _undefined(data: bytes, pos: int, implicit: bool) -> tuple[int, int]:
    """An undefined-length value from ``pos``: items (a sequence's, or encapsulated pixel data's
    fragments) up to the sequence delimiter. Returns (where the value ends, where the next element
    starts: past the delimiter)."""
    end = len(data)
    while end - pos >= 8:
        key, length = _IMPLICIT(data, pos)
        if key == _SEQUENCE_END:
            return pos, pos + 8
        if key != _ITEM:
            raise _Unwalkable  # not items: pydicom searches for the delimiter's bytes instead
        pos = _walk_item(data, pos + 8, implicit) if length == _UNDEFINED else pos + 8 + length
    raise _Unwalkable  # no sequence delimiter before the end


def _elements(data: bytes, found: dict, implicit: bool) -> dict[BaseTag, RawDataElement]:
    """pydicom's raw elements of what :func:`_explicit` or :func:`_implicit` found."""
    out = {}
    for key, (raw_vr, length, at, value_end) in found.items():
        tag = _tag(key)
        vr = _VRS[raw_vr] if raw_vr is not None else None
        if length == _UNDEFINED:
            vr, value = _undefined_vr(tag, vr, data, at), data[at:value_end]
        else:
            value = data[at:value_end] if length else empty_value_for_VR(vr, raw=True)
        out[tag] = RawDataElement(tag, vr, length, value, at, implicit, True)
    return out


@functools.lru_cache(maxsize=4096)
def _tag(key: int) -> BaseTag:
    """The tag of a swapped one (see above)."""
    return BaseTag(key >> 16 | (key & 0xFFFF) << 16)


def _undefined_vr(tag: BaseTag, vr: str | None, data: bytes, at: int) -> str | None:
    """The VR pydicom gives an element of undefined length: UN is a sequence; without a VR (implicit),
    the dictionary's, else a sequence when items follow."""
    if vr == VR.UN:
        return VR.SQ
    if vr is not None:
        return vr
    try:
        return dictionary_VR(tag)
    except KeyError:
        return VR.SQ if _U32(data, at)[0] == _ITEM else None
