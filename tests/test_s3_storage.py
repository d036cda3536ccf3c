"""S3Storage and the local S3 server, against a real S3-protocol server (rclone serve s3).

One server for the module (free port, temporary directory, stopped at teardown); each test
gets its own bucket. Failure tests use few attempts and short timeouts to stay fast.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import pickle
import signal
import socket
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from datagen.upload import local_files, upload_tree
from local_s3.server import down, local_s3, running_server, up
from pipelines.storage.base import StorageError, relative_keys
from pipelines.storage.env_file import read_env_file, write_env_file
from pipelines.storage.filesystem import FileSystemStorage
from pipelines.storage.s3 import S3Storage, S3Stream
from scripts import s3_local as cli

_bucket_numbers = itertools.count()


@pytest.fixture(scope="module")
def server(s3_server):
    """The local S3 server of this module (see ``tests/conftest.py``)."""
    return s3_server


@pytest.fixture
def bucket(server) -> str:
    """A new, empty bucket for this test."""
    name = f"test-{os.getpid()}-{next(_bucket_numbers):03d}"
    S3Storage(name, endpoint_url=server.endpoint).client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def store(server, bucket) -> S3Storage:
    """Storage at ``s3://<bucket>/ds/`` on the module's server."""
    return S3Storage(bucket, "ds", endpoint_url=server.endpoint, max_attempts=2)


def _put_many(storage: S3Storage, keys: list[str]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: storage.write(k, k.encode()), keys))


@pytest.mark.integration
def test_round_trip(store: S3Storage, tmp_path: Path):
    store.write("a/x.txt", b"hello world")
    assert store.read("a/x.txt") == b"hello world"
    assert store.size("a/x.txt") == 11
    assert store.read_range("a/x.txt", 6, 3) == b"wor"
    assert store.read_range("a/x.txt", 6, 100) == b"world"  # fewer at the end
    assert store.read_range("a/x.txt", 11, 5) == b""  # at / past the end: like a file
    assert store.read_range("a/x.txt", 0, 0) == b""
    assert store.exists("a/x.txt") and not store.exists("a/y.txt")
    store.write("a/x.txt", b"new")  # overwrite
    assert store.read("a/x.txt") == b"new"

    small = tmp_path / "small.bin"
    small.write_bytes(b"s" * 1000)
    store.put_file("b/small.bin", small)
    assert small.exists(), "put_file copies: the local file stays"
    big = tmp_path / "big.bin"
    payload = os.urandom(11 * 1024 * 1024)
    big.write_bytes(payload)
    store.put_file("b/big.bin", big, multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20)
    assert store.size("b/big.bin") == len(payload)
    assert store.read("b/big.bin") == payload

    assert list(store.list()) == ["a/x.txt", "b/big.bin", "b/small.bin"]
    assert list(store.list("b")) == ["b/big.bin", "b/small.bin"]
    assert list(store.list("b/")) == ["b/big.bin", "b/small.bin"]
    assert (
        store.describe("a/x.txt")
        == f"s3://{store.bucket}/ds/a/x.txt (endpoint {store.endpoint_url})"
    )


@pytest.mark.integration
def test_open_streams_with_bounded_reads(store: S3Storage):
    payload = os.urandom(3 * 1024 * 1024 + 17)
    store.write("blob", payload)
    with store.open("blob") as stream:
        assert isinstance(stream.raw, S3Stream)
        assert stream.read(10) == payload[:10]
        chunks = []
        while chunk := stream.read(65536):
            assert len(chunk) <= 65536
            chunks.append(chunk)
    assert stream.closed
    assert payload[:10] + b"".join(chunks) == payload
    with store.open("blob") as stream:  # readinto, as io.BufferedReader would use it
        buf = bytearray(100)
        assert stream.readinto(buf) == 100 and bytes(buf) == payload[:100]


@pytest.mark.integration
@pytest.mark.parametrize("workers", [1, 4])
def test_list_paginates_in_order(server, bucket, workers):
    storage = S3Storage(bucket, "ds", endpoint_url=server.endpoint, list_workers=workers)
    keys = [f"a/{i:05d}" for i in range(1005)] + ["b/x", "b.txt", "c/d/e", "0"]
    _put_many(storage, keys)
    listed = list(storage.list())
    assert len(listed) == len(keys)
    assert listed == sorted(keys)  # "b.txt" < "b/x": '.' sorts before '/'
    assert list(storage.list("a")) == [k for k in sorted(keys) if k.startswith("a/")]
    assert list(itertools.islice(storage.list(), 3)) == sorted(keys)[:3]  # stop early


@pytest.mark.integration
def test_missing_prefix_raises_unless_allowed(store: S3Storage):
    store.write("a/x", b"1")
    with pytest.raises(StorageError, match=rf"s3://{store.bucket}/ds/nope/ .*no objects"):
        list(store.list("nope"))
    assert list(store.list("nope", allow_empty=True)) == []
    assert list(store.list("a/x", allow_empty=True)) == []  # a key is not a folder


@pytest.mark.integration
def test_wrong_secret_names_bucket_and_credentials(server, bucket, monkeypatch, tmp_path):
    S3Storage(bucket, endpoint_url=server.endpoint).write("k", b"1")
    (tmp_path / "f").write_bytes(b"f")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x" * 40)
    storage = S3Storage(bucket, endpoint_url=server.endpoint, max_attempts=2)
    for call in (
        lambda: storage.read("k"),
        lambda: storage.size("k"),
        lambda: list(storage.list()),
        lambda: storage.put_file("f", tmp_path / "f"),
    ):
        with pytest.raises(StorageError) as info:
            call()
        message = str(info.value)
        assert bucket in message and server.endpoint in message
        assert "AWS_SECRET_ACCESS_KEY" in message and "access denied" in message
        assert "x" * 40 not in message and server.secret_key not in message
        assert sum(n for _, n in info.value.stats.errors) == 1  # the failed call's own figures


@pytest.mark.integration
def test_unknown_access_key(server, bucket, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKNOSUCHKEY000000000")
    storage = S3Storage(bucket, endpoint_url=server.endpoint, max_attempts=2)
    with pytest.raises(StorageError, match="InvalidAccessKeyId.*AWS_ACCESS_KEY_ID"):
        storage.read("k")


@pytest.mark.integration
def test_missing_credentials(server, bucket, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    storage = S3Storage(bucket, endpoint_url=server.endpoint, max_attempts=1)
    with pytest.raises(StorageError, match=f"{bucket}.*no AWS credentials found"):
        storage.read("k")


@pytest.mark.integration
def test_missing_bucket(server):
    storage = S3Storage("no-such-bucket", "p", endpoint_url=server.endpoint, max_attempts=2)
    calls = {
        "read": lambda: storage.read("k"),
        "size": lambda: storage.size("k"),
        "exists": lambda: storage.exists("k"),
        "list": lambda: list(storage.list()),
        "write": lambda: storage.write("k", b"1"),
    }
    for name, call in calls.items():
        with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist") as info:
            call()
        assert server.endpoint in str(info.value), name


@pytest.mark.integration
def test_missing_key(store: S3Storage):
    store.write("present", b"1")
    failed = []
    for call in (
        lambda: store.read("gone"),
        lambda: store.open("gone"),
        lambda: store.read_range("gone", 0, 5),
        lambda: store.size("gone"),
    ):
        missing = rf"s3://{store.bucket}/ds/gone .*no such object"
        with pytest.raises(StorageError, match=missing) as e:
            call()
        failed.append(e.value.stats)
    assert not store.exists("gone")
    assert [dict(f.errors) for f in failed] == [{"NoSuchKey": 1}] * 4
    assert [f.requests for f in failed] == [1, 1, 1, 1]


@pytest.mark.integration
def test_stopped_server_is_unreachable_after_retries(server, tmp_path):
    with local_s3(tmp_path) as other:
        env = {"AWS_ACCESS_KEY_ID": other.access_key, "AWS_SECRET_ACCESS_KEY": other.secret_key}
        with pytest.MonkeyPatch.context() as mp:
            for name, value in env.items():
                mp.setenv(name, value)
            storage = S3Storage(
                "bkt", endpoint_url=other.endpoint, max_attempts=3, connect_timeout_s=1
            )
            storage.client().create_bucket(Bucket="bkt")
            storage.write("k", b"1")
            assert storage.read("k") == b"1"
            storage.write("big", bytes(16 * 2**20))
            stream = storage.open("big")
            assert stream.read(1) == b"\0"
            os.kill(other.pid, signal.SIGKILL)  # abruptly: TERM waits for the open stream
            other.stop()
            with pytest.raises(StorageError, match="s3://bkt/big .*connection broke"):
                while stream.read(2**20):
                    pass
            with pytest.raises(StorageError) as info:
                storage.read("k")
    message = str(info.value)
    assert "unreachable after 3 attempts" in message and other.endpoint in message
    assert "s3://bkt/k" in message
    stats = info.value.stats  # the failed read's own figures
    assert stats.retries == 2 and dict(stats.errors) == {"unreachable": 1} and stats.requests == 1


def test_silent_server_times_out(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKAAAAAAAAAAAAAAAAAA")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s" * 40)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with socket.socket() as listener:  # accepts connections (backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        storage = S3Storage(
            "bkt", endpoint_url=endpoint, region="us-east-1", max_attempts=2, read_timeout_s=0.3
        )
        with pytest.raises(
            StorageError, match=r"s3://bkt/k .*no response within 0.3 s after 2"
        ) as info:
            storage.read("k")
    stats = info.value.stats
    assert dict(stats.errors) == {"timeout": 1} and stats.retries == 1


@pytest.mark.integration
def test_each_read_carries_its_own_get_and_ttfb(store: S3Storage):
    store.write("k", b"0123456789")
    data, whole = store.fetch("k")
    with store.open("k") as f:
        streamed = f.read()
        opened = f.stats()
    part, ranged = store.fetch_range("k", 2, 2)
    assert (data, streamed, part) == (b"0123456789", b"0123456789", b"23")
    for stats, nbytes in ((whole, 10), (opened, 10), (ranged, 2)):
        assert (stats.nbytes, stats.requests, stats.retries, stats.errors) == (nbytes, 1, 0, ())
        assert len(stats.ttfb_s) == 1 and 0 < stats.ttfb_s[0] <= stats.seconds < 5
    past, beyond = store.fetch_range("k", 20, 5)  # past the end: nothing, one GET (416)
    assert past == b"" and (beyond.nbytes, beyond.requests) == (0, 1)


def _child_reads(storage: S3Storage, queue) -> None:
    data, stats = storage.fetch("k")
    queue.put((data, stats.requests, id(storage.client())))


@pytest.mark.integration
def test_pickles_and_works_after_fork(store: S3Storage, server):
    store.write("k", b"payload")
    assert store.read("k") == b"payload"  # the parent has a client now
    blob = pickle.dumps(store)
    assert server.secret_key.encode() not in blob and server.access_key.encode() not in blob
    copy = pickle.loads(blob)
    assert copy._client is None and copy.fetch("k")[1].requests == 1

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_reads, args=(store, queue))
    child.start()
    data, requests, _ = queue.get(timeout=30)
    child.join(30)
    assert child.exitcode == 0
    assert data == b"payload" and requests == 1  # the parent's counts are not the child's
    assert store.read("k") == b"payload"  # the parent's client still works


def test_repr_and_describe_hide_credentials():
    storage = S3Storage("bkt", "/pre/", endpoint_url="http://user:secret@127.0.0.1:9000/")
    assert "secret" not in repr(storage) and "secret" not in storage.describe("k")
    assert storage.describe("k") == "s3://bkt/pre/k (endpoint http://127.0.0.1:9000)"
    assert S3Storage("bkt").describe("a/b") == "s3://bkt/a/b"
    with pytest.raises(ValueError):
        S3Storage("")


def test_env_file_round_trip(tmp_path: Path):
    path = tmp_path / "env"
    write_env_file(path, {"AWS_ACCESS_KEY_ID": "AK123", "S3_ENDPOINT": "http://127.0.0.1:1"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_env_file(path) == {
        "AWS_ACCESS_KEY_ID": "AK123",
        "S3_ENDPOINT": "http://127.0.0.1:1",
    }
    assert "export AWS_ACCESS_KEY_ID=AK123" in path.read_text()
    with pytest.raises(StorageError, match="s3_local up"):
        read_env_file(tmp_path / "missing")


@pytest.mark.integration
def test_up_upload_status_down(tmp_path: Path, monkeypatch, capsys):
    state_dir = tmp_path / "state"
    src = tmp_path / "src"
    (src / "JPEGImages").mkdir(parents=True)
    (src / "JPEGImages" / "a.jpg").write_bytes(b"a" * 100)
    (src / "shards" / "train").mkdir(parents=True)
    (src / "shards" / "train" / "train-000000.tar").write_bytes(b"t" * 2000)
    (src / ".hidden").write_bytes(b"h")
    assert [k for _, k in local_files(src)] == [
        ".hidden",
        "JPEGImages/a.jpg",
        "shards/train/train-000000.tar",
    ]
    for name in ("S3_ENDPOINT", "S3_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKUSERSOWNKEY0000000")  # meant for another store
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "users-own-secret")
    try:
        assert cli.main(["up", "--state-dir", str(state_dir)]) == 0
        out = capsys.readouterr().out
        env = read_env_file(state_dir / "env")
        assert env["S3_BUCKET"] == "dss-bench" and env["S3_ENDPOINT"] in out
        assert env["AWS_SECRET_ACCESS_KEY"] not in out
        assert stat.S_IMODE((state_dir / "env").stat().st_mode) == 0o600
        state = running_server(state_dir)
        assert state is not None
        assert up(state_dir)[1] is False  # already running: not started twice
        assert cli.main(["status", "--state-dir", str(state_dir)]) == 0

        code = cli.main(["upload", "--state-dir", str(state_dir), "--src", str(src)])
        assert code == 0, capsys.readouterr().err
        assert "uploaded 3 files" in capsys.readouterr().out
        assert os.environ["AWS_ACCESS_KEY_ID"] == "AKUSERSOWNKEY0000000"  # never replaced
        assert os.environ["AWS_SECRET_ACCESS_KEY"] == "users-own-secret"
        storage = S3Storage(
            "dss-bench", "bccd", endpoint_url=env["S3_ENDPOINT"], credentials_file=state_dir / "env"
        )
        assert storage.credentials_source() == f"local server ({state_dir / 'env'})"
        assert list(storage.list()) == [k for _, k in local_files(src)]
        assert storage.read("shards/train/train-000000.tar") == b"t" * 2000
        assert upload_tree(src, storage, progress=False) == (3, 2101)
    finally:
        pid = down(state_dir)
    assert pid == state["pid"]
    assert running_server(state_dir) is None and not (state_dir / "env").exists()
    assert cli.main(["status", "--state-dir", str(state_dir)]) == 3
    assert cli.main(["upload", "--state-dir", str(state_dir), "--src", str(src)]) == 1
    assert "s3_local up" in capsys.readouterr().err


@pytest.mark.integration
def test_listing_that_fails_on_a_later_page_raises_instead_of_shrinking(tmp_path):
    """The issue's case: ``relative_keys`` took any StorageError for a missing prefix, so a
    listing that failed on its second page (after the retries) gave the dataset readers the
    first 1000 keys without a word."""
    with local_s3(tmp_path) as other, pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", other.access_key)
        mp.setenv("AWS_SECRET_ACCESS_KEY", other.secret_key)
        storage = S3Storage("bkt", endpoint_url=other.endpoint, max_attempts=2, connect_timeout_s=1)
        storage.client().create_bucket(Bucket="bkt")
        _put_many(storage, [f"train/RBC/{i:05d}.jpg" for i in range(1005)])
        keys = relative_keys(storage, "train")
        first = list(itertools.islice(keys, 10))  # the first page (1000 keys) has arrived
        os.kill(other.pid, signal.SIGKILL)
        other.stop()
        with pytest.raises(StorageError) as info:
            first.extend(keys)
    message = str(info.value)
    assert "s3://bkt/train/" in message and other.endpoint in message
    assert "cannot list" in message and "unreachable after 2 attempts" in message
    assert len(first) == 1000


@pytest.mark.integration
def test_refused_listing_is_access_denied_not_a_missing_split(server, bucket, monkeypatch):
    """AccessDenied on the listing surfaced as "split 'train' not found"."""
    from pipelines.formats.folders import load_folder_split
    from pipelines.formats.voc import available_splits

    S3Storage(bucket, endpoint_url=server.endpoint).write("train/RBC/a.jpg", b"x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x" * 40)
    storage = S3Storage(bucket, endpoint_url=server.endpoint, max_attempts=1)
    for call in (
        lambda: load_folder_split(storage, "train"),
        lambda: available_splits(storage),
        lambda: list(relative_keys(storage, "train")),
    ):
        with pytest.raises(StorageError, match=rf"s3://{bucket}/.*cannot list: access denied"):
            call()


@pytest.mark.integration
def test_missing_prefix_still_yields_no_keys(store: S3Storage, tmp_path):
    store.write("a/x", b"1")
    assert list(relative_keys(store, "nope")) == []
    assert list(relative_keys(FileSystemStorage(tmp_path), "no/such/folder")) == []
    assert list(relative_keys(store, "a")) == ["x"]


# -- which endpoint and credentials a run uses ---------------------------------------------------


def s3_config(tmp_path, **storage):
    from training.config import load_config

    sets = [f"storage.{k}={v}" for k, v in {"type": "s3", **storage}.items()]
    return load_config(str(Path(__file__).parents[1] / "configs/detection.yaml"), sets)


@pytest.fixture
def user_keys(monkeypatch, tmp_path):
    """The user's own AWS keys in the environment (for another store), nothing else set; the
    working directory is a fresh folder, where ``.s3/`` is looked for."""
    for name in ("S3_ENDPOINT", "S3_BUCKET", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKUSERSOWNKEY0000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "users-own-secret")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_leftover_env_file_does_not_hijack_a_run(user_keys, caplog):
    """The issue's case: after a crashed `make s3-up`, .s3/env still exists; a STORAGE=s3 run
    meant for AWS went to 127.0.0.1 with the dead server's keys in place of the user's."""
    from training.source import open_storage

    write_env_file(
        user_keys / ".s3/env",
        {
            "AWS_ACCESS_KEY_ID": "AKDEADSERVER00000000",
            "AWS_SECRET_ACCESS_KEY": "deadserversecret",
            "S3_ENDPOINT": "http://127.0.0.1:1",
            "S3_BUCKET": "dss-bench",
        },
    )
    (user_keys / ".s3/server.json").write_text('{"pid": 999999999, "port": 1}')
    caplog.set_level("INFO")
    storage = open_storage(s3_config(user_keys, bucket="my-bucket")).storage
    assert storage.endpoint_url is None and storage.credentials_file is None  # AWS
    assert os.environ["AWS_ACCESS_KEY_ID"] == "AKUSERSOWNKEY0000000"
    assert "ignoring .s3/env: its local S3 server is not running" in caplog.text
    assert "S3 endpoint AWS (from AWS); credentials: environment" in caplog.text
    assert "users-own-secret" not in caplog.text and "deadserversecret" not in caplog.text


@pytest.mark.integration
def test_a_running_local_server_is_used_with_its_own_keys_beside_the_users(user_keys, caplog):
    from training.source import open_storage

    try:
        state, _ = up(".s3")
        caplog.set_level("INFO")
        source = open_storage(s3_config(user_keys))
        storage = source.storage
        assert storage.endpoint_url == state["endpoint"] and storage.bucket == "dss-bench"
        storage.write("probe", b"1")  # signed with the server's keys, not the user's
        assert storage.read("probe") == b"1"
        assert os.environ["AWS_ACCESS_KEY_ID"] == "AKUSERSOWNKEY0000000"  # not replaced
        assert f"S3 endpoint {state['endpoint']} (from the local server" in caplog.text
        assert f"credentials: local server ({user_keys / '.s3/env'})" in caplog.text
        secret = read_env_file(".s3/env")["AWS_SECRET_ACCESS_KEY"]
        assert secret not in caplog.text and "users-own-secret" not in caplog.text
        # a named endpoint wins over the local server, with the user's keys
        named = open_storage(
            s3_config(user_keys, endpoint_url="http://10.0.0.1:9000", bucket="b1")
        ).storage
        assert named.endpoint_url == "http://10.0.0.1:9000" and named.credentials_file is None
        # s3torchconnector reads keys from the environment only: other keys there are refused
        from training.config import ConfigError

        with pytest.raises(ConfigError, match=r"AWS_ACCESS_KEY_ID \(or AWS_SESSION_TOKEN\) holds"):
            open_storage(s3_config(user_keys, client_lib="s3torchconnector"))
    finally:
        down(".s3")


_TERMINATED = """
import sys, time
from local_s3.server import local_s3
with local_s3(sys.argv[1]) as srv:
    print(srv.endpoint, flush=True)
    time.sleep(60)
"""


def test_a_terminated_run_stops_its_local_server(tmp_path):
    """SIGTERM (a scheduler's preemption) unwinds the run, so the server it started stops too."""
    import signal
    import subprocess
    import sys

    from local_s3.server import endpoint_answers
    from tests.helpers import REPO

    proc = subprocess.Popen(
        [sys.executable, "-c", _TERMINATED, str(tmp_path / "s3")], cwd=REPO,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        port = int(proc.stdout.readline().strip().rsplit(":", 1)[1])
        assert endpoint_answers(port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        assert not endpoint_answers(port)
    finally:
        proc.kill()
        proc.wait()
