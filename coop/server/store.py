"""The artifact store's blobs: content-addressed files under the data dir, written by resumable uploads.

The first piece of the data plane (issue 15): job outputs and checkpoints will be blobs here, each
named by its SHA-256 and kept once however many attempts or jobs hold the same bytes.

An upload is a staging file that grows only at its end. Its size on disk is how far it got, so an
upload cut by a network blip or a coordinator restart resumes where it stopped: the sender asks how
far (``received``) and goes on from there. Each append is flushed to disk (``fsync``) before it is
acknowledged. The bytes are hashed as they arrive (in this process; after a restart, or an append
in another worker, finishing reads the staging file again). Finishing checks the hash, refuses one
that is not the one announced (the upload is then dropped: its bytes are wrong somewhere, so it starts again), and moves
it into place with one rename; a blob already there is kept and the staging file dropped.

Nothing is read whole into memory: appends take an iterable of chunks and reads yield chunks. The
calls block on disk: routes run them in worker threads, never on the event loop.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from coop.server.config import Settings
from coop.server.services.errors import Conflict, HashMismatch, Invalid, NotFound, TooLarge

CHUNK = 1 << 20  # bytes read or hashed at a time
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_UPLOAD_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class OffsetMismatch(Conflict):
    """An append that does not start where the upload stands: the sender resumes from ``received``."""

    def __init__(self, upload_id: str, offset: int, received: int) -> None:
        super().__init__(
            f"upload {upload_id} has {received} bytes, not {offset}",
            field="offset",
            fix=f"send the bytes from offset {received} on",
        )
        self.received = received


class BlobStore:
    """Blobs under ``root/blobs/ab/<sha256>``, uploads staged under ``root/uploads/<id>``. ``max_bytes``:
    the largest blob an upload may make."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.blobs = root / "blobs"
        self.uploads = root / "uploads"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.uploads.mkdir(parents=True, exist_ok=True)
        self._hashing: dict[str, tuple[int, Any]] = {}  # upload id -> (bytes hashed, SHA-256 so far)
        self._hashing_lock = threading.Lock()

    # --- uploads ---------------------------------------------------------------------------------

    def received(self, upload_id: str) -> int:
        """How many bytes of the upload are on disk (0 for one not begun): where the sender resumes."""
        try:
            return self._staging(upload_id).stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, upload_id: str, offset: int, chunks: Iterable[bytes]) -> int:
        """Add ``chunks`` at ``offset``, which must be where the upload stands; returns the new size,
        once it is on disk. Past ``max_bytes`` nothing more is written and ``TooLarge`` is raised."""
        path = self._staging(upload_id)
        with open(path, "ab") as out:
            try:  # one append at a time: two at one offset would interleave
                fcntl.flock(out, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Conflict(
                    f"upload {upload_id} is being appended to", field="upload", fix="wait for that append to end"
                ) from None
            size = out.seek(0, os.SEEK_END)
            if offset != size:
                raise OffsetMismatch(upload_id, offset, size)
            running = self._resume_hash(upload_id, size)  # dropped on any failure: finish reads the file
            for chunk in chunks:
                if size + len(chunk) > self.max_bytes:
                    out.flush()
                    os.fsync(out.fileno())
                    raise self._too_large()
                out.write(chunk)
                size += len(chunk)
                if running is not None:
                    running.update(chunk)
            out.flush()
            os.fsync(out.fileno())
        if running is not None:
            with self._hashing_lock:
                self._hashing[upload_id] = (size, running)
        return size

    def finish(self, upload_id: str, sha256: str) -> int:
        """Make the upload the blob ``sha256``, checking that its bytes hash to it; returns its size."""
        _check_sha256(sha256)
        path = self._staging(upload_id)
        try:
            with open(path, "rb") as f:
                digest, size = self._digest(upload_id, f)
        except FileNotFoundError:
            raise NotFound(f"no upload {upload_id}", field="upload", fix="begin the upload again") from None
        if digest != sha256:
            path.unlink(missing_ok=True)
            raise HashMismatch(
                f"upload {upload_id} hashes to {digest}, not {sha256}",
                field="sha256",
                fix="send the file again from the start: some of its bytes were not the file's",
            )
        blob = self._blob(sha256)
        if blob.exists():
            path.unlink()
        else:
            blob.parent.mkdir(exist_ok=True)
            os.replace(path, blob)
            _fsync_dir(blob.parent)
        return size

    def abort(self, upload_id: str) -> None:
        self._staging(upload_id).unlink(missing_ok=True)
        self._forget_hash(upload_id)

    def sweep_uploads(self, older_than_s: float) -> list[str]:
        """Drop the uploads no one appended to for ``older_than_s``; returns their ids."""
        cutoff = time.time() - older_than_s
        dropped = []
        for path in self.uploads.iterdir():
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                self._forget_hash(path.name)
                dropped.append(path.name)
        return sorted(dropped)

    def _resume_hash(self, upload_id: str, size: int) -> Any:
        """The running hash of an upload that stands at ``size``: a new one at 0, None when unknown."""
        with self._hashing_lock:
            known = self._hashing.pop(upload_id, None)
        if known is not None and known[0] == size:
            return known[1]
        return hashlib.sha256() if size == 0 else None

    def _forget_hash(self, upload_id: str) -> None:
        with self._hashing_lock:
            self._hashing.pop(upload_id, None)

    def _digest(self, upload_id: str, f: IO[bytes]) -> tuple[str, int]:
        """The SHA-256 and size of the staging file ``f``: from the hash kept while it was appended to
        when that covers the whole file, else by reading it (one pass, a chunk at a time)."""
        size = os.fstat(f.fileno()).st_size
        with self._hashing_lock:
            known = self._hashing.pop(upload_id, None)
        if known is not None and known[0] == size:
            return known[1].hexdigest(), size
        digest = hashlib.sha256()
        f.seek(0)
        while chunk := f.read(CHUNK):
            digest.update(chunk)
        return digest.hexdigest(), f.tell()

    # --- blobs -----------------------------------------------------------------------------------

    def has(self, sha256: str) -> bool:
        _check_sha256(sha256)
        return self._blob(sha256).exists()

    def size(self, sha256: str) -> int:
        _check_sha256(sha256)
        try:
            return self._blob(sha256).stat().st_size
        except FileNotFoundError:
            raise _missing(sha256) from None

    def read(self, sha256: str, offset: int = 0) -> Iterator[bytes]:
        """The blob's bytes from ``offset`` on, a chunk at a time (a download resumes at an offset)."""
        _check_sha256(sha256)
        try:
            f = open(self._blob(sha256), "rb")  # noqa: SIM115 (closed by the generator)
        except FileNotFoundError:
            raise _missing(sha256) from None
        return _chunks(f, offset)

    def delete(self, sha256: str) -> None:
        _check_sha256(sha256)
        self._blob(sha256).unlink(missing_ok=True)

    def usage(self) -> int:
        """Bytes held by blobs (uploads in progress not counted)."""
        return sum(p.stat().st_size for p in self.blobs.glob("*/*"))

    # --- paths -----------------------------------------------------------------------------------

    def _staging(self, upload_id: str) -> Path:
        if not _UPLOAD_ID.match(upload_id):
            raise Invalid(
                f"{upload_id!r} is not an upload id", field="upload", fix="use 8-64 letters, digits, '-' or '_'"
            )
        return self.uploads / upload_id

    def _blob(self, sha256: str) -> Path:
        return self.blobs / sha256[:2] / sha256

    def _too_large(self) -> TooLarge:
        return TooLarge(
            f"the upload is over the store's limit of {self.max_bytes} bytes",
            field="size",
            fix="write less to the job's output or checkpoint directory",
        )


def _chunks(f: IO[bytes], offset: int) -> Iterator[bytes]:
    with f:
        f.seek(offset)
        while chunk := f.read(CHUNK):
            yield chunk


def _check_sha256(sha256: str) -> None:
    if not _SHA256.match(sha256):
        raise Invalid(f"{sha256!r} is not a SHA-256", field="sha256", fix="give 64 lowercase hex digits")


def _missing(sha256: str) -> NotFound:
    return NotFound(f"no blob {sha256}", field="sha256", fix="upload it first")


def _fsync_dir(path: Path) -> None:
    """Make a rename into ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_store(settings: Settings) -> BlobStore:
    """The store the settings name: an S3-compatible bucket (``COOP_STORE_URL=s3://bucket/prefix``),
    or files under the data dir. Uploads are staged under the data dir either way."""
    max_bytes = int(settings.max_artifact_gb * 10**9)
    if settings.store_url:
        from coop.server.store_s3 import S3BlobStore

        return S3BlobStore(settings.store_url, settings.store_dir, max_bytes, endpoint_url=settings.store_endpoint_url)
    return BlobStore(settings.store_dir, max_bytes)
