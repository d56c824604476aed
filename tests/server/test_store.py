"""The artifact store's blobs: resumable, verified, content-addressed, streamed. On a real directory."""

from __future__ import annotations

import hashlib
import os
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from coop.server.services.errors import Conflict, HashMismatch, Invalid, NotFound, TooLarge
from coop.server.store import CHUNK, BlobStore, OffsetMismatch

MiB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_an_upload_cut_short_resumes_where_it_stopped_even_after_a_restart(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 17)
    store = BlobStore(tmp_path, max_bytes=10 * MiB)
    assert store.received("up-00001") == 0
    assert store.append("up-00001", 0, [data[:MiB], data[MiB : 2 * MiB]]) == 2 * MiB
    # the coordinator restarts: a new store on the same directory knows how far the upload got
    store = BlobStore(tmp_path, max_bytes=10 * MiB)
    assert store.received("up-00001") == 2 * MiB
    with pytest.raises(OffsetMismatch) as refused:  # a sender that lost track is told where to go on
        store.append("up-00001", MiB, [data[MiB:]])
    assert refused.value.received == 2 * MiB and refused.value.field == "offset"
    assert store.received("up-00001") == 2 * MiB, "a refused append wrote nothing"
    store.append("up-00001", 2 * MiB, [data[2 * MiB :]])
    assert store.finish("up-00001", sha(data)) == len(data)
    assert b"".join(store.read(sha(data))) == data
    assert b"".join(store.read(sha(data), offset=MiB + 5)) == data[MiB + 5 :]  # a download resumes too
    assert store.size(sha(data)) == len(data) and store.received("up-00001") == 0


def test_a_wrong_hash_is_refused_and_the_upload_starts_again(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_bytes=MiB)
    store.append("up-00002", 0, [b"hello"])
    with pytest.raises(HashMismatch) as refused:
        store.finish("up-00002", sha(b"hellp"))
    assert refused.value.field == "sha256" and sha(b"hello") in refused.value.message
    assert not store.has(sha(b"hellp")) and not store.has(sha(b"hello"))
    assert store.received("up-00002") == 0


def test_the_same_bytes_are_stored_once(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_bytes=MiB)
    for upload in ("up-00003", "up-00004"):
        store.append(upload, 0, [b"same bytes"])
        store.finish(upload, sha(b"same bytes"))
    assert [p.name for p in (tmp_path / "blobs").glob("*/*")] == [sha(b"same bytes")]
    assert list((tmp_path / "uploads").iterdir()) == []
    assert store.usage() == len(b"same bytes")
    store.delete(sha(b"same bytes"))
    assert not store.has(sha(b"same bytes")) and store.usage() == 0


def test_an_upload_past_the_limit_stops_there_and_names_the_limit(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_bytes=2 * MiB)
    with pytest.raises(TooLarge) as refused:
        store.append("up-00005", 0, [b"x" * MiB, b"x" * MiB, b"x" * MiB])
    assert str(2 * MiB) in refused.value.message
    assert store.received("up-00005") == 2 * MiB  # what fitted is kept: nothing past the limit


def test_names_that_could_leave_the_store_are_refused(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store", max_bytes=MiB)
    for bad in ("../../etc/passwd", "a/b", "short", ""):
        with pytest.raises(Invalid) as refused:
            store.append(bad, 0, [b"x"])
        assert refused.value.field == "upload"
    for bad in ("../" + "a" * 61, "A" * 64, "abc"):
        with pytest.raises(Invalid):
            store.read(bad)
    with pytest.raises(NotFound):
        store.read("0" * 64)
    with pytest.raises(NotFound):
        store.finish("up-00006", "0" * 64)
    assert not (tmp_path / "etc").exists()


def test_one_append_at_a_time(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_bytes=64 * MiB)
    entered, release = threading.Event(), threading.Event()

    def slow() -> Iterator[bytes]:
        yield b"a" * CHUNK
        entered.set()
        release.wait(10)
        yield b"b" * CHUNK

    first = threading.Thread(target=store.append, args=("up-00007", 0, slow()))
    first.start()
    assert entered.wait(10)
    with pytest.raises(Conflict) as refused:
        store.append("up-00007", 0, [b"c"])
    assert "being appended" in refused.value.message
    release.set()
    first.join(10)
    assert store.received("up-00007") == 2 * CHUNK


def test_a_large_blob_goes_through_in_chunks_not_whole(tmp_path: Path) -> None:
    size = 48 * MiB
    store = BlobStore(tmp_path, max_bytes=size)
    digest = hashlib.sha256()

    def source() -> Iterator[bytes]:
        block = os.urandom(CHUNK)
        for _ in range(size // CHUNK):
            digest.update(block)
            yield block

    tracemalloc.start()
    store.append("up-00008", 0, source())
    store.finish("up-00008", digest.hexdigest())
    read = sum(len(chunk) for chunk in store.read(digest.hexdigest()))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert read == size
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB for a {size // MiB} MiB blob"


def test_abandoned_uploads_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_bytes=MiB)
    store.append("up-old-01", 0, [b"left behind"])
    store.append("up-new-01", 0, [b"still coming"])
    day_ago = os.stat(tmp_path / "uploads" / "up-old-01").st_mtime - 86400
    os.utime(tmp_path / "uploads" / "up-old-01", (day_ago, day_ago))
    assert store.sweep_uploads(older_than_s=3600) == ["up-old-01"]
    assert store.received("up-old-01") == 0 and store.received("up-new-01") == len(b"still coming")
