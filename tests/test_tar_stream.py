"""The shard reader's tar parser against Python's tarfile: same members, same bytes, and the
malformed cases (truncation, corrupt header) caught."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from pipelines.tar_stream import TarFormatError, iter_members

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
    from pipelines.tar_stream import _byte_sum

    blocks = [bytes(512), b"\xff" * 512, b"0" * 512, b"\x01" + bytes(511)]
    blocks += [os.urandom(512) for _ in range(500)]
    blocks += [bytes(os.urandom(1)) * 512 for _ in range(100)]  # one repeated value
    for block in blocks:
        assert _byte_sum(block) == sum(block)
