"""Packed workdirs (tar.gz), stored once by content hash under the data dir.

An archive is small on the wire and can be huge once unpacked (a gzip bomb: 60 MiB of zeros
expands 1000-fold), or hold a million empty entries. So an upload is checked, and a launch
unpacks, by streaming the tar through a meter that counts every decompressed byte, with caps on
expanded bytes, entries and time, stopping as soon as one is passed. File work runs in worker
threads and the check in worker processes (it is CPU-bound: in a thread it would hold the GIL),
each behind a small limiter of its own, never on the event loop, so a bomb being checked slows no
other request and cannot take the thread pool that sync routes run in.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar, cast

import anyio
import anyio.to_process
import anyio.to_thread
from anyio.lowlevel import RunVar

from coop.server.config import Settings
from coop.server.services.errors import DomainError, HashMismatch, InvalidWorkdir, TooLarge

T = TypeVar("T")
_CHUNK = 1 << 20  # bytes decompressed at a time, and of upload body written per worker-thread call
_CHECK_PROCESSES = 2  # archive checks at once, each in a worker process; more uploads wait for a slot
_CHECK_NICENESS = 10
_WRITE_THREADS = 4  # upload bodies written (and fsynced) at once
_MAX_HEADER = 1 << 20  # longest long-name or pax header read
_EXTENDED_HEADERS = {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE, b"X"}
_check_limiter: RunVar[anyio.CapacityLimiter] = RunVar("coop_workdir_check_limiter")
_write_limiter: RunVar[anyio.CapacityLimiter] = RunVar("coop_workdir_write_limiter")


@dataclass(frozen=True)
class Limits:
    """What one workdir may cost once unpacked."""

    expanded_bytes: int
    entries: int
    seconds: float

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(settings.max_workdir_expanded_bytes, settings.max_workdir_entries, settings.max_workdir_check_s)


def path_of(settings: Settings, sha256: str) -> Path:
    return settings.workdir_dir / f"{sha256}.tar.gz"


def exists(settings: Settings, sha256: str) -> bool:
    return path_of(settings, sha256).is_file()


def _refused(kind: type[DomainError], message: str, fix: str) -> DomainError:
    """Every refusal of a workdir names the field ``workdir``: TooLarge when it is too big, else InvalidWorkdir."""
    return kind(message, field="workdir", fix=fix)


_PACK_WITH_COOP = "pack the workdir with 'coop submit' (a gzip-compressed tar whose paths stay relative)"
_LEAVE_OUT = "leave data and checkpoints out of the workdir (add them to .coopignore) or ask the admin to raise "


def _too_large(settings: Settings) -> DomainError:
    return _refused(
        TooLarge, f"the packed workdir exceeds {settings.max_workdir_mb:g} MB", _LEAVE_OUT + "COOP_MAX_WORKDIR_MB"
    )


def _expands_too_much(limits: Limits) -> DomainError:
    message = f"the workdir expands beyond {limits.expanded_bytes / 2**20:g} MB once unpacked"
    return _refused(TooLarge, message, _LEAVE_OUT + "COOP_MAX_WORKDIR_EXPANDED_MB")


def _too_many_entries(limits: Limits) -> DomainError:
    message = f"the workdir holds more than {limits.entries} files and folders"
    fix = "leave generated files out of the workdir (add them to .coopignore) or ask the admin to raise "
    return _refused(TooLarge, message, fix + "COOP_MAX_WORKDIR_ENTRIES")


def _too_slow(limits: Limits) -> DomainError:
    message = f"reading the workdir archive took longer than {limits.seconds:g} s"
    return _refused(
        InvalidWorkdir,
        message,
        "upload a smaller workdir with fewer files, or ask the admin to raise COOP_MAX_WORKDIR_CHECK_S",
    )


class _Meter:
    """The decompressed tar stream. Every byte tarfile sees (headers, data, data it skips) passes
    through :meth:`read`, so the expanded-bytes cap and the deadline hold whatever the archive holds.
    It decompresses 1 MiB at a time and hands tarfile the small reads it asks for from that."""

    def __init__(self, raw: IO[bytes], limits: Limits, deadline: float) -> None:
        self._gz = gzip.GzipFile(fileobj=raw, mode="rb")
        self._limits = limits
        self._deadline = deadline
        self._buf = memoryview(b"")
        self.expanded = 0

    def _refill(self) -> None:
        if time.monotonic() > self._deadline:
            raise _too_slow(self._limits)
        room = self._limits.expanded_bytes + 1 - self.expanded  # one byte more than allowed shows a bomb
        data = self._gz.read(min(_CHUNK, room))
        self.expanded += len(data)
        if self.expanded > self._limits.expanded_bytes:
            raise _expands_too_much(self._limits)
        self._buf = memoryview(data)

    def read(self, size: int | None = -1) -> bytes:
        if not self._buf:
            self._refill()
        if size is None or size < 0:
            size = len(self._buf)
        out, self._buf = self._buf[:size], self._buf[size:]
        return bytes(out)


class _Member(tarfile.TarInfo):
    """Refuses an extended header (long name, pax) too long to be real before tarfile reads it whole
    into memory: the expanded cap alone would let one header take hundreds of MiB."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED_HEADERS and self.size > _MAX_HEADER:
            raise _refused(
                InvalidWorkdir,
                f"an archive header is {self.size} bytes long, more than any workdir needs",
                _PACK_WITH_COOP,
            )
        return super()._proc_member(tar)  # type: ignore[misc]


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    link_escapes = member.linkname.startswith("/") or ".." in Path(member.linkname).parts
    if name.startswith("/") or ".." in Path(name).parts or member.issym() and link_escapes:
        raise _refused(InvalidWorkdir, f"archive member {name!r} points outside the workdir", _PACK_WITH_COOP)
    if member.isdev() or member.islnk() and link_escapes:
        raise _refused(
            InvalidWorkdir,
            f"archive member {name!r} is not a regular file",
            "leave devices and hard links out of the workdir",
        )


def _scan(archive: Path, limits: Limits, each: Callable[[tarfile.TarFile, tarfile.TarInfo], None]) -> None:
    """Walk the archive once, streaming, member by member; refuse at the first cap passed."""
    deadline = time.monotonic() + limits.seconds
    try:
        with (
            archive.open("rb") as raw,
            tarfile.open(
                fileobj=cast("IO[bytes]", _Meter(raw, limits, deadline)),  # tarfile only calls read()
                mode="r|",  # plain tar over the meter: tarfile must not decompress anything behind its back
                # bufsize stays tarfile's 10 KiB: it copies its buffer on every header it reads
                tarinfo=_Member,
            ) as tar,
        ):
            entries = declared = 0
            while (member := tar.next()) is not None:
                tar.members.clear()  # type: ignore[attr-defined]  # else a stream keeps every member: 438 MiB for 1M
                entries += 1
                declared += member.size  # a sparse member declares its full size, and unpacks to it
                if entries > limits.entries:
                    raise _too_many_entries(limits)
                if declared > limits.expanded_bytes:
                    raise _expands_too_much(limits)
                if time.monotonic() > deadline:
                    raise _too_slow(limits)
                _check_member(member)
                each(tar, member)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise _refused(InvalidWorkdir, f"the workdir is not a readable .tar.gz ({exc})", _PACK_WITH_COOP) from None


def check_archive(path: Path, limits: Limits) -> None:
    """Refuse anything but a gzip tar whose members stay inside the workdir and within the caps."""
    _scan(path, limits, lambda tar, member: None)


def extract(archive: Path, target: Path, limits: Limits) -> Path:
    """Unpack ``archive`` into ``target`` (new, or an empty directory) under the same caps as an
    upload's check: a stored archive is never trusted to have been checked (the caps may have
    changed since). On refusal nothing stays: ``target`` is removed, and the refusal raised."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        _scan(archive, limits, lambda tar, member: tar.extract(member, target, filter="data"))
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


async def _in_thread(limiter: RunVar[anyio.CapacityLimiter], tokens: int, fn: Callable[..., T], *args: object) -> T:
    """Run blocking ``fn`` in a worker thread behind this event loop's own limiter of ``tokens``."""
    try:
        lim = limiter.get()
    except LookupError:
        lim = anyio.CapacityLimiter(tokens)
        limiter.set(lim)
    return await anyio.to_thread.run_sync(fn, *args, limiter=lim)


async def _in_process(limiter: RunVar[anyio.CapacityLimiter], tokens: int, fn: Callable[..., T], *args: object) -> T:
    """Run CPU-bound ``fn`` in one of anyio's worker processes, at most ``tokens`` at once. Not a
    thread: decompressing a bomb in a thread held the GIL so often that every request waited on it
    (health p99 10 s under bench/upload_load.py with 100 nodes)."""
    try:
        lim = limiter.get()
    except LookupError:
        lim = anyio.CapacityLimiter(tokens)
        limiter.set(lim)
    return await anyio.to_process.run_sync(fn, *args, limiter=lim)


def _check_refusal(path: Path, limits: Limits) -> DomainError | None:
    """``check_archive`` in a worker process: the refusal (domain errors pickle), or None.
    The worker yields the CPU to the coordinator (nice 10): a bomb is checked with what is left."""
    if os.nice(0) < _CHECK_NICENESS:
        os.nice(_CHECK_NICENESS - os.nice(0))
    try:
        check_archive(path, limits)
    except DomainError as exc:
        return exc
    return None


def _write(out: IO[bytes], digest: hashlib._Hash, chunks: list[bytes], final: bool) -> None:
    for chunk in chunks:
        digest.update(chunk)
        out.write(chunk)
    if final:
        out.flush()
        os.fsync(out.fileno())


async def store(settings: Settings, sha256: str, declared_size: int | None, chunks: AsyncIterator[bytes]) -> int:
    """Stream the upload to a temp file, verify size, hash and contents, then move it into place
    atomically. File work runs in worker threads, the check in a worker process (module docstring)."""
    limit = settings.max_workdir_bytes
    if declared_size is not None and declared_size > limit:
        raise _too_large(settings)
    limits = Limits.of(settings)
    workdir_dir = settings.workdir_dir

    def create() -> tuple[int, str]:
        workdir_dir.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(dir=workdir_dir, suffix=".part")

    fd, tmp_name = await _in_thread(_write_limiter, _WRITE_THREADS, create)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            batch: list[bytes] = []
            batched = 0
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise _too_large(settings)
                batch.append(chunk)
                batched += len(chunk)
                if batched >= _CHUNK:
                    todo, batch, batched = batch, [], 0
                    await _in_thread(_write_limiter, _WRITE_THREADS, _write, out, digest, todo, False)
            await _in_thread(_write_limiter, _WRITE_THREADS, _write, out, digest, batch, True)
        if digest.hexdigest() != sha256:
            raise HashMismatch(
                "the uploaded bytes do not have the SHA-256 in the URL",
                field="sha256",
                fix="PUT the archive to /v1/workdirs/<sha256 of exactly those bytes>",
            )
        refusal = await _in_process(_check_limiter, _CHECK_PROCESSES, _check_refusal, tmp, limits)
        if refusal is not None:
            raise refusal
        tmp.replace(path_of(settings, sha256))
    finally:
        tmp.unlink(missing_ok=True)
    return size
