"""The artifact store's blobs in an S3 bucket: the same behaviours as test_store.py, against a real S3 server.

The server is moto's (``moto_server``, from the dev extra), a separate process speaking S3 over HTTP on
127.0.0.1: boto3 goes through its real HTTP stack, multipart uploads included (moto refuses parts under
5 MiB as S3 does). Without it the tests skip, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coop.server.services.errors import Conflict, HashMismatch, Invalid, NotFound, TooLarge
from coop.server.store import CHUNK, OffsetMismatch

try:
    import boto3

    from coop.server.store_s3 import PART, S3BlobStore
except ImportError as e:  # boto3 is in the dev extra
    if os.environ.get("CI") == "true":
        raise
    pytest.skip(f"boto3 is not installed ({e}): pip install -e '.[dev]'", allow_module_level=True)

MiB = 1 << 20
BUCKET = "coop-artifacts"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _moto_server() -> str | None:
    beside = Path(sys.executable).parent / "moto_server"
    return str(beside) if beside.exists() else shutil.which("moto_server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(binary: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """moto_server on a free port, once it answers S3 calls; tries a few ports (another process may take one)."""
    for _ in range(3):
        port = _free_port()
        endpoint = f"http://127.0.0.1:{port}"
        with open(log, "ab") as out:
            proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out)
        client = _client(endpoint)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                client.list_buckets()
                return proc, endpoint
            except Exception:
                time.sleep(0.05)  # polling interval, bounded by the deadline
        proc.kill()
        proc.wait(10)
    pytest.fail(f"moto_server did not answer on 127.0.0.1 within 30 s; its log:\n{log.read_text()[-3000:]}")


def _client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = _moto_server()
    if binary is None:
        why = "moto_server is not installed (pip install -e '.[dev]' brings moto[server])"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    proc, endpoint = _start(binary, tmp_path_factory.mktemp("moto") / "moto_server.log")
    try:
        _client(endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials from the environment, no region (the store picks us-east-1), no ~/.aws files."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def url() -> str:
    """A prefix of its own for each test, so usage counts only its blobs."""
    return f"s3://{BUCKET}/tests/{uuid.uuid4().hex}"


def make(url: str, staging: Path, max_bytes: int, endpoint: str) -> S3BlobStore:
    return S3BlobStore(url, staging, max_bytes, endpoint_url=endpoint)


def keys(endpoint: str, prefix: str) -> list[str]:
    listed = _client(endpoint).list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [obj["Key"] for obj in listed.get("Contents", [])]


@pytest.mark.usefixtures("aws_env")
def test_an_upload_cut_short_resumes_where_it_stopped_even_after_a_restart(
    tmp_path: Path, s3_endpoint: str, url: str
) -> None:
    data = os.urandom(3 * MiB + 17)
    store = make(url, tmp_path, 10 * MiB, s3_endpoint)
    assert store._client.meta.region_name == "us-east-1"
    assert store.received("up-00001") == 0
    assert store.append("up-00001", 0, [data[:MiB], data[MiB : 2 * MiB]]) == 2 * MiB
    # the coordinator restarts: a new store on the same staging directory knows how far the upload got
    store = make(url, tmp_path, 10 * MiB, s3_endpoint)
    assert store.received("up-00001") == 2 * MiB
    with pytest.raises(OffsetMismatch) as refused:  # a sender that lost track is told where to go on
        store.append("up-00001", MiB, [data[MiB:]])
    assert refused.value.received == 2 * MiB and refused.value.field == "offset"
    assert store.received("up-00001") == 2 * MiB, "a refused append wrote nothing"
    store.append("up-00001", 2 * MiB, [data[2 * MiB :]])
    assert not store.has(sha(data)), "nothing goes to the bucket before the upload is finished"
    assert store.finish("up-00001", sha(data)) == len(data)
    assert b"".join(store.read(sha(data))) == data
    assert b"".join(store.read(sha(data), offset=MiB + 5)) == data[MiB + 5 :]  # a download resumes too
    assert store.size(sha(data)) == len(data) and store.received("up-00001") == 0
    prefix = url.removeprefix(f"s3://{BUCKET}/")
    assert keys(s3_endpoint, prefix) == [f"{prefix}/blobs/{sha(data)[:2]}/{sha(data)}"]


@pytest.mark.usefixtures("aws_env")
def test_a_wrong_hash_is_refused_and_the_upload_starts_again(tmp_path: Path, s3_endpoint: str, url: str) -> None:
    store = make(url, tmp_path, MiB, s3_endpoint)
    store.append("up-00002", 0, [b"hello"])
    with pytest.raises(HashMismatch) as refused:
        store.finish("up-00002", sha(b"hellp"))
    assert refused.value.field == "sha256" and sha(b"hello") in refused.value.message
    assert not store.has(sha(b"hellp")) and not store.has(sha(b"hello"))
    assert store.received("up-00002") == 0 and store.usage() == 0


@pytest.mark.usefixtures("aws_env")
def test_the_same_bytes_are_stored_once(tmp_path: Path, s3_endpoint: str, url: str) -> None:
    store = make(url, tmp_path, MiB, s3_endpoint)
    sent: list[str] = []
    upload_file = store._client.upload_file

    def counted(*args: Any, **kwargs: Any) -> None:
        sent.append(args[2])
        upload_file(*args, **kwargs)

    store._client.upload_file = counted
    for upload in ("up-00003", "up-00004"):
        store.append(upload, 0, [b"same bytes"])
        assert store.finish(upload, sha(b"same bytes")) == len(b"same bytes")
    assert len(sent) == 1, "a blob already in the bucket is not sent again"
    prefix = url.removeprefix(f"s3://{BUCKET}/")
    assert keys(s3_endpoint, prefix) == [f"{prefix}/blobs/{sha(b'same bytes')[:2]}/{sha(b'same bytes')}"]
    assert list((tmp_path / "uploads").iterdir()) == []
    assert store.usage() == len(b"same bytes")
    store.delete(sha(b"same bytes"))
    assert not store.has(sha(b"same bytes")) and store.usage() == 0
    store.delete(sha(b"same bytes"))  # deleting what is gone is no error


@pytest.mark.usefixtures("aws_env")
def test_an_upload_past_the_limit_stops_there_and_names_the_limit(tmp_path: Path, s3_endpoint: str, url: str) -> None:
    store = make(url, tmp_path, 2 * MiB, s3_endpoint)
    with pytest.raises(TooLarge) as refused:
        store.append("up-00005", 0, [b"x" * MiB, b"x" * MiB, b"x" * MiB])
    assert str(2 * MiB) in refused.value.message
    assert store.received("up-00005") == 2 * MiB  # what fitted is kept: nothing past the limit


@pytest.mark.usefixtures("aws_env")
def test_missing_blobs_and_bad_names_are_refused_as_on_disk(tmp_path: Path, s3_endpoint: str, url: str) -> None:
    store = make(url, tmp_path, MiB, s3_endpoint)
    for bad in ("../../etc/passwd", "a/b", "short", ""):
        with pytest.raises(Invalid) as refused:
            store.append(bad, 0, [b"x"])
        assert refused.value.field == "upload"
    for bad in ("../" + "a" * 61, "A" * 64, "abc"):
        with pytest.raises(Invalid):
            store.read(bad)
    with pytest.raises(Invalid):
        store.read("0" * 64, offset=-1)
    for call in (store.read, store.size):
        with pytest.raises(NotFound) as missing:
            call("0" * 64)
        assert missing.value.field == "sha256"
    with pytest.raises(NotFound):
        store.read("0" * 64, offset=5)
    with pytest.raises(NotFound):
        store.finish("up-00006", "0" * 64)
    assert not store.has("0" * 64)


@pytest.mark.usefixtures("aws_env")
def test_reads_at_the_end_and_of_an_empty_blob_give_nothing(tmp_path: Path, s3_endpoint: str, url: str) -> None:
    store = make(url, tmp_path, MiB, s3_endpoint)
    store.append("up-empty-1", 0, [])
    assert store.finish("up-empty-1", sha(b"")) == 0
    assert list(store.read(sha(b""))) == [] and store.size(sha(b"")) == 0
    store.append("up-00009", 0, [b"0123456789"])
    store.finish("up-00009", sha(b"0123456789"))
    assert b"".join(store.read(sha(b"0123456789"), offset=9)) == b"9"
    assert list(store.read(sha(b"0123456789"), offset=10)) == []  # S3 answers 416 there; a file read, nothing
    assert list(store.read(sha(b"0123456789"), offset=99)) == []


@pytest.mark.usefixtures("aws_env")
def test_no_append_while_an_upload_is_finished_nor_a_finish_while_appended(
    tmp_path: Path, s3_endpoint: str, url: str
) -> None:
    store = make(url, tmp_path, 64 * MiB, s3_endpoint)
    entered, release = threading.Event(), threading.Event()

    def slow() -> Iterator[bytes]:
        yield b"a" * CHUNK
        entered.set()
        release.wait(10)
        yield b"b" * CHUNK

    first = threading.Thread(target=store.append, args=("up-00007", 0, slow()))
    first.start()
    assert entered.wait(10)
    with pytest.raises(Conflict):
        store.finish("up-00007", sha(b"a" * CHUNK))
    release.set()
    first.join(10)
    data = b"a" * CHUNK + b"b" * CHUNK
    assert store.received("up-00007") == len(data)

    upload_file, refused = store._client.upload_file, []

    def upload_while_appended(*args: Any, **kwargs: Any) -> None:  # the bytes sent are the bytes hashed
        with pytest.raises(Conflict) as conflict:
            store.append("up-00007", len(data), [b"more"])
        refused.append(conflict.value)
        upload_file(*args, **kwargs)

    store._client.upload_file = upload_while_appended
    assert store.finish("up-00007", sha(data)) == len(data)
    assert refused and b"".join(store.read(sha(data))) == data


@pytest.mark.usefixtures("aws_env")
def test_an_upload_dropped_and_begun_anew_while_it_is_sent_is_not_kept(
    tmp_path: Path, s3_endpoint: str, url: str
) -> None:
    store = make(url, tmp_path, MiB, s3_endpoint)
    store.append("up-00010", 0, [b"first try"])
    upload_file = store._client.upload_file

    def dropped_meanwhile(*args: Any, **kwargs: Any) -> None:
        upload_file(*args, **kwargs)
        store.abort("up-00010")  # a sweep drops it, and the sender begins again
        store.append("up-00010", 0, [b"second"])

    store._client.upload_file = dropped_meanwhile
    with pytest.raises(Conflict) as refused:
        store.finish("up-00010", sha(b"first try"))
    assert "dropped" in refused.value.message
    assert not store.has(sha(b"first try")) and store.received("up-00010") == len(b"second")


@pytest.mark.usefixtures("aws_env")
def test_a_store_at_the_bucket_root_and_urls_that_are_not_s3(tmp_path: Path, s3_endpoint: str) -> None:
    bucket = f"coop-root-{uuid.uuid4().hex[:12]}"
    _client(s3_endpoint).create_bucket(Bucket=bucket)
    store = make(f"s3://{bucket}", tmp_path, MiB, s3_endpoint)
    store.append("up-00011", 0, [b"at the root"])
    store.finish("up-00011", sha(b"at the root"))
    listed = _client(s3_endpoint).list_objects_v2(Bucket=bucket)["Contents"]
    assert [obj["Key"] for obj in listed] == [f"blobs/{sha(b'at the root')[:2]}/{sha(b'at the root')}"]
    for bad in ("http://bucket/x", "s3://", "bucket/prefix", "s3:///prefix"):
        with pytest.raises(ValueError):
            make(bad, tmp_path, MiB, s3_endpoint)


@pytest.mark.usefixtures("aws_env")
def test_usage_counts_every_page_of_blobs(tmp_path: Path, s3_endpoint: str, url: str) -> None:
    store = make(url, tmp_path, MiB, s3_endpoint)
    pages: list[int] = []
    paginator = store._client.get_paginator

    def small_pages(name: str) -> Any:
        real = paginator(name)
        real_paginate = real.paginate

        def paginate(**kwargs: Any) -> Iterator[dict[str, Any]]:
            for page in real_paginate(**kwargs, PaginationConfig={"PageSize": 2}):
                pages.append(page.get("KeyCount", 0))
                yield page

        real.paginate = paginate
        return real

    store._client.get_paginator = small_pages
    blobs = [f"blob number {i}".encode() for i in range(5)]
    for i, blob in enumerate(blobs):
        store.append(f"up-usage-{i}", 0, [blob])
        store.finish(f"up-usage-{i}", sha(blob))
    store.append("up-usage-9", 0, [b"still uploading"])  # staged, not counted
    assert store.usage() == sum(len(blob) for blob in blobs)
    assert len(pages) == 3


@pytest.mark.usefixtures("aws_env")
def test_a_large_blob_goes_to_the_bucket_in_parts_and_comes_back_in_chunks(
    tmp_path: Path, s3_endpoint: str, url: str
) -> None:
    size = 48 * MiB
    store = make(url, tmp_path, size, s3_endpoint)
    digest = hashlib.sha256()

    def source() -> Iterator[bytes]:
        block = os.urandom(CHUNK)
        for _ in range(size // CHUNK):
            digest.update(block)
            yield block

    chunks = source()
    for offset in range(0, size, MiB):  # as a sender does: one 1 MiB append at a time
        assert store.append("up-00008", offset, [next(chunks)]) == offset + MiB
    tracemalloc.start()
    assert store.finish("up-00008", digest.hexdigest()) == size
    finish_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    back, lengths = hashlib.sha256(), []
    for chunk in store.read(digest.hexdigest()):
        back.update(chunk)
        lengths.append(len(chunk))
    read_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert back.hexdigest() == digest.hexdigest() and sum(lengths) == size
    assert set(lengths) == {CHUNK}
    head = _client(s3_endpoint).head_object(Bucket=BUCKET, Key=store._key(digest.hexdigest()))
    assert head["ETag"].strip('"').endswith(f"-{size // PART}"), f"not a multipart upload: ETag {head['ETag']}"
    assert finish_peak < 16 * MiB, f"finish peaked at {finish_peak / MiB:.1f} MiB for a {size // MiB} MiB blob"
    assert read_peak < 8 * MiB, f"read peaked at {read_peak / MiB:.1f} MiB for a {size // MiB} MiB blob"


@pytest.mark.usefixtures("aws_env")
def test_a_coordinator_with_a_bucket_takes_outputs_and_serves_them(tmp_path: Path, s3_endpoint: str, url: str) -> None:
    """COOP_STORE_URL=s3://...: a wrapper's upload lands in the bucket, and a pull (with a Range resume)
    reads it back through the coordinator, whole."""
    from sqlmodel import Session, select

    from coop.server import security
    from coop.server.models import Attempt
    from coop.server.services import artifacts, scheduling
    from coop.transfer import Sender, download
    from tests.api.helpers import job_spec, node
    from tests.conftest import loopless_coordinator
    from tests.observability.cooperative import InProcessBackend

    with loopless_coordinator(tmp_path / "coop", store_url=url, store_endpoint_url=s3_endpoint) as c:
        c.new_member("alice")
        researcher = c.new_member("bob")[0]
        c.agent("alice").register_node(node("n1", gpus=1))
        job_id = researcher.submit(job_spec("ft", 1))["id"]
        with Session(c.engine, expire_on_commit=False) as session:
            scheduling.cycle(session, c.settings, InProcessBackend())
            attempt = session.exec(select(Attempt)).one()
        token = artifacts.credential(security.load_key(c.settings.transfer_key_path), attempt)
        data = os.urandom(9 * MiB + 5)  # over one 8 MiB request, and multipart in the bucket
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "weights.bin").write_bytes(data)
        sender = Sender(c.url, token)
        done = sender.send(tmp_path / "out", "output")
        sender.close()
        assert done is not None and done["bytes"] == len(data)
        assert keys(s3_endpoint, url.removeprefix(f"s3://{BUCKET}/")) == [
            f"{url.removeprefix(f's3://{BUCKET}/')}/blobs/{sha(data)[:2]}/{sha(data)}"
        ]
        assert not list((c.settings.store_dir / "blobs").glob("*/*")), "no blob on the coordinator's disk"
        [item] = researcher.outputs(job_id)[0]["items"]
        target = tmp_path / "pulled" / "weights.bin"
        target.parent.mkdir()
        target.with_name("weights.bin.part").write_bytes(data[: 3 * MiB])  # a pull cut short before
        fetched = download(researcher, f"/jobs/{job_id}/files/{item['id']}", target, len(data), sha(data))
        assert fetched == len(data) - 3 * MiB and target.read_bytes() == data
