"""Read the members of a tar stream front to back, parsing the headers from large buffered reads.

The hot loop of sequential shard reading: Python's ``tarfile`` (WebDataset's
``tar_file_iterator``) makes a ``TarInfo`` and several small reads per member, several times
slower (``python -m scripts.bench_shards`` measures both); here headers are parsed in place
from ``chunk_size`` reads, memory bounded by one chunk plus the largest member.

Format (POSIX.1-1988 "ustar", as extended by POSIX.1-2001 "pax"; the GNU tar manual, "Basic
Tar Format"): a 512-byte header per member, whose fields are ``name`` (bytes 0-99),
``size`` (124-135, octal, or base-256 when the first byte has its high bit set), ``chksum``
(148-155, octal: the sum of the header's bytes with the checksum field counted as spaces),
``typeflag`` (156) and, for ustar, ``prefix`` (345-499, prepended to the name with a ``/``); the
member's data follows, padded to a multiple of 512 bytes; the archive ends with zero blocks.
A pax ``x`` header's records (``"<length> <key>=<value>\\n"``) override the next member's
``path`` and ``size``; a GNU ``L`` header holds the next member's long name. Only regular files
are yielded (directories, links and global headers are skipped, as WebDataset does).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import BinaryIO

BLOCK = 512
#: Type flags (header byte 156) of regular files: ``0``, the pre-POSIX NUL, ``7`` (contiguous).
REGULAR = frozenset(b"0\07")
TYPE_PAX = ord("x")  # pax extended header: records for the next member
TYPE_LONG_NAME = ord("L")  # GNU: the next member's long name


#: Largest single ``read`` asked of the stream for a member that runs past the buffer (bytes):
#: a damaged size field then costs reads of at most this much at a time until the stream
#: ends, never one huge allocation.
MAX_READ = 64 * 2**20


class TarFormatError(Exception):
    """The stream is not a well-formed tar (bad checksum, number or pax record, or truncated).

    Attributes:
        reason: what is wrong, without the place.
        offset: byte offset of the header being parsed when it failed (None: not known).
        member: that header's member name, when its checksum held (else None).
        after: the last regular member read whole before it (None: none yet).
    """

    def __init__(
        self,
        reason: str,
        *,
        offset: int | None = None,
        member: str | None = None,
        after: str | None = None,
    ):
        self.reason, self.offset, self.member, self.after = reason, offset, member, after
        where = []
        if offset is not None:
            where.append(f"header at byte {offset}")
        if member is not None:
            where.append(f"member {member!r}")
        elif after is not None:
            where.append(f"after member {after!r}")
        elif offset is not None:
            where.append("before the first member")
        super().__init__(f"{reason} ({', '.join(where)})" if where else reason)


def _straddle(
    stream: BinaryIO, buffer: bytes, pos: int, n: int, chunk_size: int
) -> tuple[bytes, bytes, int]:
    """The ``n`` bytes from ``buffer[pos:]`` on, when they run past the buffer's end.

    Reads ``chunk_size`` (or, for a larger piece, the missing bytes, at most :data:`MAX_READ`)
    at a time and assembles the piece from views of the reads, so each byte is copied once into
    it, never the rest of a read.

    Returns:
        ``(piece, buffer, pos)``: the piece, the last read and the position in it just past
        the piece.

    Raises:
        TarFormatError: the stream ends first.
    """
    parts = [memoryview(buffer)[pos:]]
    have = len(parts[0])
    while True:
        chunk = stream.read(max(chunk_size, min(n - have, MAX_READ)))
        if not chunk:
            raise TarFormatError(f"unexpected end of data ({n - have} bytes missing)")
        if have + len(chunk) >= n:
            parts.append(memoryview(chunk)[: n - have])
            return b"".join(parts), chunk, n - have
        parts.append(memoryview(chunk))
        have += len(chunk)


def iter_members(
    stream: BinaryIO, chunk_size: int = 1 << 20, *, limit: int | None = None
) -> Iterator[tuple[str, bytes, int]]:
    """Yield ``(name, data, end)`` for every regular file in the tar ``stream``, in archive order.

    ``end`` is the offset in bytes just past the member's data and padding. Reading stops at the
    first zero block (the end-of-archive marker); what follows it (the second zero block, record
    padding) is left in the stream, except what the last ``chunk_size`` read took with it. Each
    header costs two small calls (:func:`_checked_header`, :func:`_member_size`) that parse
    headers spelled as ``tarfile`` and GNU tar write them (a 6-digit octal checksum, an 11-digit
    octal size) inline; any other spelling takes the general parse.

    Args:
        stream: a binary stream positioned at the start of the archive; only ``read`` is used.
        chunk_size: bytes per ``stream.read`` call (a larger member is read in calls of up to
            :data:`MAX_READ` bytes).
        limit: the stream's length in bytes when known (a shard's size from its manifest): a
            member whose size runs past it is refused at its header, before it is read.

    Raises:
        TarFormatError: the stream ends inside a header or a member, a header's checksum is
            wrong (a corrupt or non-tar file), a size is not a number, negative or past
            ``limit``, or a pax extended header is malformed. The error names the header's
            byte offset and its member (or the member before it).
    """
    buffer, pos, consumed = b"", 0, 0  # consumed: bytes of the stream parsed so far
    override: dict[str, str] = {}
    header, checked, at, last = b"", False, 0, None  # for the error message
    try:
        while True:
            at, checked = consumed, False
            if pos + BLOCK <= len(buffer):
                header = buffer[pos : pos + BLOCK]
                pos += BLOCK
            else:
                try:
                    header, buffer, pos = _straddle(stream, buffer, pos, BLOCK, chunk_size)
                except TarFormatError:
                    raise TarFormatError(
                        "unexpected end of data (no end-of-archive marker)"
                    ) from None
            if not _checked_header(header):
                return  # the end-of-archive marker
            checked = True
            size = _member_size(header, override, consumed, limit)
            stop = pos + size
            if stop <= len(buffer):
                data = buffer[pos:stop]
                pos = stop
            else:
                data, buffer, pos = _straddle(stream, buffer, pos, size, chunk_size)
            padding = -size % BLOCK
            if pos + padding <= len(buffer):
                pos += padding
            else:
                _, buffer, pos = _straddle(stream, buffer, pos, padding, chunk_size)
            consumed += BLOCK + size + padding
            kind = header[156]
            if kind == TYPE_PAX:
                override = _pax_records(data)
                continue
            if kind == TYPE_LONG_NAME:
                override = {"path": data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")}
                continue
            name = override.get("path") or _name(header)
            override = {}
            if kind in REGULAR:
                last = name
                yield name, data, consumed
    except TarFormatError as exc:
        member = (override.get("path") or _name(header)) if checked else None
        raise TarFormatError(exc.reason, offset=at, member=member, after=last) from None


def _checked_header(header: bytes) -> bool:
    """Check a 512-byte header block's checksum: True for a member's header, False for a zero block.

    A zero block is the end-of-archive marker. The checksum spelled ``"%06o\\0 "``, as tarfile
    and GNU tar write it, is read inline; any other spelling through :func:`_stored_checksum`.

    Raises:
        TarFormatError: the checksum is wrong (a corrupt or non-tar file).
    """
    expected = _byte_sum(header) - sum(header[148:156]) + 8 * 32  # chksum as spaces
    try:  # "%06o\0 ", as tarfile and GNU tar write the checksum
        stored = int(header[148:154], 8) if header[154] == 0 else -1
    except ValueError:
        stored = -1
    if stored != expected:
        if header.count(0) == BLOCK:
            return False  # the end-of-archive marker
        if _stored_checksum(header) != expected:  # another spelling, or corrupt
            raise TarFormatError("bad tar header checksum (not a tar file, or corrupt)")
    return True


def _member_size(header: bytes, override: dict[str, str], consumed: int, limit: int | None) -> int:
    """The size in bytes of a checked header's member; a pax ``size`` in ``override`` wins.

    Args:
        header: the member's 512-byte header block.
        override: the pax or GNU records that apply to this member.
        consumed: the stream's offset of the header, in bytes.
        limit: the stream's length in bytes when known.

    Raises:
        TarFormatError: the size is not a number, is negative, or runs past ``limit``.
    """
    if "size" in override:
        size = _pax_size(override["size"])
    else:
        try:  # "%011o\0", as tarfile and GNU tar write sizes below 8 GiB
            size = int(header[124:135], 8) if header[135] == 0 else _number(header[124:136])
        except ValueError:
            size = _number(header[124:136])
    if size < 0 or (limit is not None and consumed + BLOCK + size > limit):
        raise TarFormatError(
            f"member size {size} is negative"
            if size < 0
            else f"member size {size} runs past the end of the {limit}-byte archive"
        )
    return size


def _name(header: bytes) -> str:
    """The member name of a header: ``prefix/name`` for ustar headers with a prefix."""
    end = header.find(0, 0, 100)
    name = header[: end if end >= 0 else 100]
    if header[345] and header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or base-256 as GNU tar writes it (``tarfile.nti``).

    Base-256 when byte 0 is ``0x80`` (positive) or ``0xff`` (negative, two's complement).
    """
    if field[0] & 0x80:
        if field[0] not in (0x80, 0xFF):
            raise TarFormatError(f"invalid base-256 number field {field!r} in a tar header")
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0xFF else value
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarFormatError(f"invalid number field {field!r} in a tar header") from None


def _byte_sum(block: bytes) -> int:
    """``sum(block)`` for a 512-byte block, exactly, faster than ``sum``.

    Adler-32 (RFC 1950, section 8.2) starts its first sum at 1 and adds every byte modulo
    65521. A 256-byte half of the block sums to at most ``256 * 255 = 65280 < 65521``, so the
    low 16 bits of ``zlib.adler32(half)``, minus 1, are that half's byte sum exactly.
    """
    return (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2


def _stored_checksum(header: bytes) -> int:
    """The header's ``chksum`` field in any spelling :func:`_number` reads; -1 if not a number."""
    try:
        return _number(header[148:156])
    except TarFormatError:
        return -1


def _pax_records(data: bytes) -> dict[str, str]:
    """The ``key=value`` records of a pax extended header.

    Each record is ``"<length> <key>=<value>\\n"``, ``<length>`` the decimal byte count of
    the whole record (POSIX.1-2001, pax "extended header"). Keys are UTF-8; values are kept
    as text with undecodable bytes escaped (``surrogateescape``).

    Raises:
        TarFormatError: a length that is not a positive number, a record that runs past the
            header or does not end in a newline, or a record without ``key=``.
    """
    records, pos, end = {}, 0, len(data)
    while pos < end:
        space = data.find(b" ", pos, min(end, pos + 20))
        digits = data[pos:space] if space > pos else b""
        length = int(digits) if digits.isdigit() else 0  # bytes.isdigit: ASCII digits only
        stop = pos + length
        if length <= 0 or stop > end:
            raise TarFormatError(
                f"invalid pax extended header: record length {digits[:20]!r} at byte {pos} is "
                "not a positive number that fits in the header"
            )
        if data[stop - 1] != 0x0A or b"=" not in data[space + 1 : stop - 1]:
            raise TarFormatError(
                f"invalid pax extended header: the record at byte {pos} is not "
                "'<length> <key>=<value>\\n'"
            )
        key, _, value = data[space + 1 : stop - 1].partition(b"=")
        try:
            records[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        except UnicodeDecodeError:
            raise TarFormatError(
                f"invalid pax extended header: key {key[:40]!r} is not UTF-8"
            ) from None
        pos = stop
    return records


def _pax_size(value: str) -> int:
    """A pax ``size`` record's value: a decimal byte count.

    Raises:
        TarFormatError: not a non-negative decimal number.
    """
    if not (value.isascii() and value.isdigit()):
        raise TarFormatError(f"invalid pax size {value[:40]!r}: not a decimal byte count")
    return int(value)
