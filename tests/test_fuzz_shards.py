"""Property test: a damaged shard ends in the shard error, never in another exception or a hang.

Real shards (written by the shard writer from BCCD images) are mutated the ways storage and
people damage files: bit flips, truncation, edited size fields (with and without a fixed-up
header checksum) and inserted pax extended headers with well-formed and malformed records.
Each mutated shard is read with :func:`pipelines.shards.reader.iter_shard`:

- with its manifest's size and CRC-32, the reader yields exactly the original samples or
  raises :class:`ShardError` naming the shard (a change it cannot see in the tar structure is
  caught by the checksum);
- with the parser alone (no size, no checksum), it may yield other samples, but still fails
  only with :class:`ShardError`.

Every case runs under a time limit (a hang fails the test). ``make test`` runs a seeded,
bounded number of cases (300 per property, about 12 s here); ``make fuzz`` runs 20,000 per
property with fresh random seeds (``HYPOTHESIS_PROFILE=fuzz``), and prints the failing plan
of damages when one fails.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.formats.voc import load_voc_split
from pipelines.shards.manifest import ShardError, ShardInfo
from pipelines.shards.reader import iter_shard
from pipelines.shards.writer import write_shards
from pipelines.storage.filesystem import FileSystemStorage
from tests.helpers import make_voc_subset

#: Seconds one case may take (reading a ~100 kB shard takes about a millisecond).
CASE_LIMIT_S = 2.0

settings.register_profile(
    "default",
    max_examples=50,  # make test; make fuzz runs 20,000
    derandomize=True,  # seeded: the same cases on every run of make test
    deadline=None,  # the per-case limit below is a real interrupt, not a report afterwards
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "fuzz",
    max_examples=20_000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))  # make fuzz: fuzz


class Hang(Exception):
    """A case ran past :data:`CASE_LIMIT_S`."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Interrupt the block with :class:`Hang` after ``seconds`` (SIGALRM, main thread)."""

    def interrupt(signum, frame):
        raise Hang(f"no result after {seconds} s: the reader hangs")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """``(storage, shard info, its bytes, its samples, the byte offsets of its headers)``."""
    root = make_voc_subset(tmp_path_factory.mktemp("fuzz") / "bccd", {"train": 4})
    storage = FileSystemStorage(root)
    records, _ = load_voc_split(storage, "train")
    (info,) = write_shards(storage, records, "shards/train", target_bytes=10**7)
    data = storage.read(info.key)
    samples = [sample for sample, _ in iter_shard(storage, info)]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        headers = [m.offset for m in tar.getmembers()]
    return storage, info, data, samples, headers


def fix_checksum(data: bytearray, at: int) -> None:
    """Recompute the checksum of the header at ``at`` (as a writer would have written it)."""
    header = data[at : at + 512]
    header[148:156] = b" " * 8
    data[at + 148 : at + 156] = b"%06o\0 " % sum(header)


def pax_header(records: bytes) -> bytes:
    """A pax extended header (``x``) holding ``records``, padded to whole blocks."""
    info = tarfile.TarInfo("PaxHeaders/x")
    info.type = tarfile.XHDTYPE
    info.size = len(records)
    return info.tobuf(tarfile.USTAR_FORMAT) + records + b"\0" * (-len(records) % 512)


@st.composite
def pax_records(draw) -> bytes:
    """One to three pax records, each well-formed or damaged in its length."""
    out = b""
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(["size", "path", "comment", "mtime", "é"]))
        value = draw(
            st.one_of(
                st.integers(0, 10**7).map(str),
                st.text(max_size=20),
                st.sampled_from(["-5", "0", "000000000.jpg", "000000001.json"]),
            )
        )
        body = f" {key}={value}\n".encode()
        length = len(body) + 1
        while len(body) + len(str(length)) != length:
            length += 1
        kind = draw(st.sampled_from(["right", "right", "zero", "negative", "random", "junk"]))
        text = {
            "right": str(length),
            "zero": "0",
            "negative": f"-{length}",
            "random": str(draw(st.integers(0, 10**6))),
            "junk": draw(st.text(min_size=1, max_size=4)),
        }[kind]
        out += text.encode() + body
    return out


SIZE_FIELDS = st.one_of(
    st.binary(min_size=12, max_size=12),
    st.integers(0, 8**11 - 1).map(lambda n: b"%011o\0" % n),
    st.integers(1, 10**6).map(lambda n: b"-%010o\0" % n),
    st.binary(min_size=11, max_size=11).map(lambda b: b"\x80" + b),
    st.binary(min_size=11, max_size=11).map(lambda b: b"\xff" + b),
)

#: One to three damages, each a small tuple (positions are taken modulo the data's length
#: when applied, so a plan stays valid after a truncation and prints short).
DAMAGES = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 2**31), st.integers(0, 7)),
        st.tuples(st.just("truncate"), st.integers(0, 2**31)),
        st.tuples(st.just("size"), st.integers(0, 63), SIZE_FIELDS, st.booleans()),
        st.tuples(st.just("pax"), st.integers(0, 63), pax_records()),
    ),
    min_size=1,
    max_size=3,
)


def damage(original: bytes, headers: list[int], plan: list[tuple]) -> bytes:
    """``original`` with the damages of ``plan`` (see :data:`DAMAGES`) applied in turn."""
    data = bytearray(original)
    for kind, *args in plan:
        if kind == "flip" and data:
            data[args[0] % len(data)] ^= 1 << args[1]
        elif kind == "truncate":
            del data[args[0] % (len(data) + 1) :]
        elif kind == "size":
            at = headers[args[0] % len(headers)]
            if at + 512 <= len(data):
                data[at + 124 : at + 136] = args[1]
                if args[2]:
                    fix_checksum(data, at)
        elif kind == "pax":
            at = headers[args[0] % len(headers)]
            data[at:at] = pax_header(args[1])
    return bytes(data)


def read(storage, info: ShardInfo, data: bytes) -> list[dict]:
    with time_limit(CASE_LIMIT_S):
        return [sample for sample, _ in iter_shard(storage, info, io.BytesIO(data))]


def test_undamaged_shard_reads_back_whole(shard):
    storage, info, data, samples, _ = shard
    assert read(storage, info, data) == samples and len(samples) == 4


@given(plan=DAMAGES)
def test_damaged_shard_yields_the_original_samples_or_the_shard_error(shard, plan):
    storage, info, original, samples, headers = shard
    mutated = damage(original, headers, plan)
    try:
        got = read(storage, info, mutated)
    except ShardError as exc:
        assert f"shard {storage.describe(info.key)}" in str(exc)
        assert "written again on next use" in str(exc)
        return
    assert got == samples  # only possible when the bytes are the same
    assert mutated == original


@given(plan=DAMAGES)
def test_parser_alone_fails_only_with_the_shard_error(shard, plan):
    """Without the manifest's size and checksum, damage can pass as other samples; but the
    reader still never raises anything else, and never hangs."""
    storage, info, original, _, headers = shard
    bare = ShardInfo(info.key, 0, info.samples, info.ids)
    with contextlib.suppress(ShardError):
        read(storage, bare, damage(original, headers, plan))
