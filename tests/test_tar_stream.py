"""The shard reader's tar parser against Python's tarfile: same members, same bytes, and the
malformed cases (truncation, corrupt header) caught."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from pipelines.shards.tar_stream import TarFormatError, iter_members

LONG = "a-folder-with-a-long-name/" * 5 + "sample.with.dots.jpg"  # > 100 bytes


def make_tar(fmt: int, members: list[tuple[str, bytes]], *, directory: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        if directory:
            info = tarfile.TarInfo("a-dir")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


MEMBERS = [
    ("000000000.jpg", os.urandom(1000)),
    ("000000000.json", b'{"id": "x"}'),
    ("empty.txt", b""),
    ("exactly-one-block.bin", b"z" * 512),
    ("big.bin", os.urandom(70_000)),  # larger than the chunk size used below
    (LONG, b"long name"),
]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("chunk_size", [1000, 1 << 20])
def test_members_match_tarfile(fmt, chunk_size):
    members = MEMBERS if fmt != tarfile.USTAR_FORMAT else MEMBERS[:-1] + [("dir/" * 30 + "x", b"")]
    data = make_tar(fmt, members)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        expected = [
            (m.name, tar.extractfile(m).read(), m.offset_data + -(-m.size // 512) * 512)
            for m in tar
            if m.isreg()
        ]
    assert [(name, payload) for name, payload, _ in expected] == members  # the reference
    assert list(iter_members(io.BytesIO(data), chunk_size=chunk_size)) == expected


def test_stops_at_the_end_marker_and_leaves_the_rest_unread():
    data = make_tar(tarfile.PAX_FORMAT, MEMBERS[:2], directory=False)
    stream = io.BytesIO(data + b"trailing")
    assert len(list(iter_members(stream, chunk_size=512))) == 2
    assert stream.read().endswith(b"trailing")


@pytest.mark.parametrize("cut", [100, 512 + 300, 3 * 512 + 10])
def test_truncated_archive_is_an_error(cut):
    data = make_tar(tarfile.PAX_FORMAT, MEMBERS[:2], directory=False)
    with pytest.raises(TarFormatError, match="unexpected end of data"):
        list(iter_members(io.BytesIO(data[:cut])))


def test_corrupt_header_fails_its_checksum():
    data = bytearray(make_tar(tarfile.PAX_FORMAT, MEMBERS[:2], directory=False))
    data[5] ^= 0xFF  # a byte of the first member's name
    with pytest.raises(TarFormatError, match="checksum"):
        list(iter_members(io.BytesIO(bytes(data))))
    for garbage in (b"not a tar file " * 200, bytes(range(256)) * 8, os.urandom(2048)):
        with pytest.raises(TarFormatError, match="checksum"):
            list(iter_members(io.BytesIO(garbage)))


def test_header_byte_sum_is_exact():
    """The checksum's fast byte sum (Adler-32 residue + parity) equals ``sum`` on every kind
    of block, including the extremes where the residue wraps."""
    from pipelines.shards.tar_stream import _byte_sum

    blocks = [bytes(512), b"\xff" * 512, b"0" * 512, b"\x01" + bytes(511)]
    blocks += [os.urandom(512) for _ in range(500)]
    blocks += [bytes(os.urandom(1)) * 512 for _ in range(100)]  # one repeated value
    for block in blocks:
        assert _byte_sum(block) == sum(block)


# -- damaged headers: each ends in TarFormatError naming the place, never a hang ------------------


def pax_tar(pax: dict[str, str], name: str = "000000000.jpg", data: bytes = b"abc") -> bytearray:
    """A pax tar of one member carrying the extended records ``pax``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.pax_headers = pax
        tar.addfile(info, io.BytesIO(data))
    return bytearray(buffer.getvalue())


def set_header_field(data: bytearray, header_at: int, start: int, value: bytes) -> None:
    """Overwrite bytes ``start..`` of the header at ``header_at`` and fix its checksum, so that
    only the edited field is wrong (as a bug in a writer, not a bit flip, would leave it)."""
    header = data[header_at : header_at + 512]
    header[start : start + len(value)] = value
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    data[header_at : header_at + 512] = header


def parse(data: bytes, **kwargs) -> list:
    return list(iter_members(io.BytesIO(bytes(data)), **kwargs))


@pytest.mark.timeout(10)
@pytest.mark.parametrize("length", [b"00", b"-5", b"+1", b"1x", b"99", b"  "])
def test_malformed_pax_record_length_is_an_error_not_a_loop(length):
    """The issue's case: a real pax record ``17 comment=hello`` whose length is overwritten
    with ``00`` made the parser spin forever; a negative, signed, non-numeric or too long
    length is refused too."""
    data = pax_tar({"comment": "hello"})
    at = data.find(b"17 comment=hello")
    data[at : at + 2] = length
    with pytest.raises(TarFormatError, match="invalid pax extended header") as caught:
        parse(data)
    assert caught.value.offset == 0 and "PaxHeader" in caught.value.member


@pytest.mark.timeout(10)
def test_pax_record_without_newline_or_key_is_an_error():
    data = pax_tar({"comment": "hello"})
    at = data.find(b"17 comment=hello\n")
    for bad in (b"17 comment=hello!", b"17 commentXhello\n"):
        edited = bytearray(data)
        edited[at : at + 17] = bad
        with pytest.raises(TarFormatError, match="invalid pax extended header"):
            parse(edited)


def raw_pax_tar(records: bytes, name: str = "000000000.jpg", data: bytes = b"abc") -> bytes:
    """A ustar tar whose first member is a pax extended header holding exactly ``records``
    (any bytes, well-formed or not), followed by the member ``name``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        pax = tarfile.TarInfo("PaxHeaders/" + name)
        pax.type = tarfile.XHDTYPE
        pax.size = len(records)
        tar.addfile(pax, io.BytesIO(records))
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def pax_record(key: str, value: str) -> bytes:
    """One well-formed pax record ``"<length> key=value\\n"``."""
    body = f" {key}={value}\n".encode()
    length = len(body) + 1
    while len(body) + len(str(length)) != length:  # the length counts its own digits
        length += 1
    return str(length).encode() + body


def test_raw_pax_tar_helper_makes_what_the_parser_reads():
    data = raw_pax_tar(pax_record("path", "renamed.jpg") + pax_record("size", "3"))
    assert parse(data) == [("renamed.jpg", b"abc", 512 * 4)]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("size", ["abc", "-3", "1e3", "", "\u0663"])  # the last: Arabic-Indic 3
def test_non_numeric_pax_size_is_a_tar_error_naming_the_member(size):
    with pytest.raises(TarFormatError, match="invalid pax size") as caught:
        parse(raw_pax_tar(pax_record("size", size)))
    assert caught.value.member == "000000000.jpg"  # the member the size was for
    assert caught.value.offset == 1024  # its header: after the pax header and its data


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "field", [b"-0000000001", b"\xff" + b"\xff" * 10, b"\x81" + bytes(10), b"0000000001x"]
)
def test_negative_or_malformed_size_field_is_an_error(field):
    data = bytearray(make_tar(tarfile.USTAR_FORMAT, MEMBERS[:2], directory=False))
    set_header_field(data, 0, 124, field + b"\0" * (12 - len(field)))
    with pytest.raises(TarFormatError) as caught:
        parse(data)
    assert caught.value.member == "000000000.jpg"
    assert "size" in str(caught.value) or "number field" in str(caught.value)


@pytest.mark.timeout(10)
def test_size_past_the_known_length_is_refused_before_reading():
    data = bytearray(make_tar(tarfile.USTAR_FORMAT, MEMBERS[:2], directory=False))
    set_header_field(data, 0, 124, b"\x80" + (10**15).to_bytes(11, "big"))  # 1 PB, base-256

    class Counting(io.BytesIO):
        asked = 0

        def read(self, n=-1):
            Counting.asked = max(Counting.asked, n)
            return super().read(n)

    with pytest.raises(TarFormatError, match="runs past the end of the"):
        list(iter_members(Counting(bytes(data)), limit=len(data)))
    # without a known length the member is read in bounded pieces until the data runs out
    with pytest.raises(TarFormatError, match="unexpected end of data"):
        list(iter_members(Counting(bytes(data)), chunk_size=512))
    from pipelines.shards.tar_stream import MAX_READ

    assert Counting.asked <= MAX_READ


@pytest.mark.timeout(10)
def test_non_utf8_pax_key_is_an_error():
    data = pax_tar({"comment": "hello"})
    at = data.find(b"comment")
    data[at : at + 2] = b"\xff\xfe"
    with pytest.raises(TarFormatError, match="not UTF-8"):
        parse(data)


def test_error_names_the_member_before_a_corrupt_header():
    data = bytearray(make_tar(tarfile.USTAR_FORMAT, MEMBERS[:2], directory=False))
    second = 512 + 1024  # the first member: a header and 1000 bytes padded to 1024
    data[second + 3] ^= 0xFF
    with pytest.raises(TarFormatError, match="checksum") as caught:
        parse(data)
    assert caught.value.offset == second
    assert caught.value.member is None and caught.value.after == "000000000.jpg"
    assert "after member '000000000.jpg'" in str(caught.value)
