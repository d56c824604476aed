"""Packing a job's workdir into a deterministic tar.gz and shipping it once.

The archive is addressed by its SHA-256, so the same tree must give the same bytes: entries are
sorted, times, owners and modes are normalised and gzip's header carries no name or time. Then a
resubmission uploads nothing (``HEAD /v1/workdirs/{sha}`` says the coordinator already has it).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn

from coop.cli import output
from coop.cli.output import UserError
from coop.client import CoopClient

DEFAULT_EXCLUDES = (".git", "__pycache__", ".venv", "*.pyc")
IGNORE_FILE = ".coopignore"
DEFAULT_MAX_MB = 64.0
SHOW_PROGRESS_BYTES = 8 * 1024 * 1024  # below this, packing and uploading are too quick to watch
IGNORE_FIX = f"list it in {IGNORE_FILE} (one glob per line, e.g. data/*.bin)"


class WorkdirError(UserError):
    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message, field="workdir", fix=fix)


@dataclass(frozen=True)
class Entry:
    name: str  # POSIX path inside the archive
    source: Path  # what is read (a symlinked file is stored as the file it points to)
    kind: str  # dir | file | symlink
    size: int = 0
    link: str = ""


@dataclass(frozen=True)
class Packed:
    root: Path
    data: bytes
    sha256: str
    files: int
    source_bytes: int


def max_bytes() -> int:
    raw = os.environ.get("COOP_MAX_WORKDIR_MB", "")
    try:
        mb = float(raw) if raw else DEFAULT_MAX_MB
    except ValueError:
        mb = -1
    if not mb > 0:
        raise UserError(
            f"COOP_MAX_WORKDIR_MB={raw!r} is not a positive number of MB",
            field="COOP_MAX_WORKDIR_MB",
            fix="set it to a size in MB, e.g. 64, or unset it",
        )
    return int(mb * 1024 * 1024)


def ignore_patterns(root: Path) -> list[str]:
    """The built-in excludes plus ``.coopignore``: fnmatch globs, one a line, ``#`` for comments."""
    patterns = list(DEFAULT_EXCLUDES)
    path = root / IGNORE_FILE
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                patterns.append(line.strip("/") or line)
    return patterns


def is_ignored(name: str, patterns: list[str]) -> bool:
    """A glob matches an entry's base name or its whole path (``data/*.bin``, ``*.ckpt``, ``logs``)."""
    base = name.rsplit("/", 1)[-1]
    return any(fnmatchcase(base, p) or fnmatchcase(name, p) for p in patterns)


def scan(root: Path) -> list[Entry]:
    """What goes in the archive, in archive order; refuses what could not be shipped faithfully."""
    root = root.resolve()
    return list(_walk(root, root, ignore_patterns(root)))


def _walk(root: Path, directory: Path, patterns: list[str]) -> Iterator[Entry]:
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        name = path.relative_to(root).as_posix()
        if is_ignored(name, patterns):
            continue
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            yield _symlink(root, path, name)
        elif stat.S_ISDIR(st.st_mode):
            yield Entry(name, path, "dir")
            yield from _walk(root, path, patterns)
        elif stat.S_ISREG(st.st_mode):
            yield Entry(name, path, "file", st.st_size)
        else:
            raise WorkdirError(
                f"{name} in the workdir is not a regular file, folder or symlink", f"remove it or {IGNORE_FIX}"
            )


def _symlink(root: Path, path: Path, name: str) -> Entry:
    target = path.resolve()
    if not target.is_relative_to(root) or not target.exists():
        where = "does not exist" if target.is_relative_to(root) else "is outside the workdir"
        raise WorkdirError(
            f"symlink {name} points to {target}, which {where}",
            f"copy what it points to into the workdir, or {IGNORE_FIX}",
        )
    if target.is_file():
        return Entry(name, target, "file", target.stat().st_size)
    link = os.readlink(path)
    if link.startswith("/") or ".." in PurePosixPath(link).parts:
        raise WorkdirError(
            f"symlink {name} to a folder uses the path {link!r}; the coordinator accepts only "
            "links to folders below the link",
            f"replace it with the folder itself, or {IGNORE_FIX}",
        )
    return Entry(name, path, "symlink", link=link)


class _TooBig(Exception):
    pass


class _CappedBuffer(io.BytesIO):
    """Stops packing as soon as the archive passes the cap, so a huge dataset fails fast."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def write(self, data: Any) -> int:
        written = super().write(data)
        if self.tell() > self.limit:
            raise _TooBig
        return written


def _tarinfo(entry: Entry, size: int = 0, executable: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    if entry.kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    elif entry.kind == "symlink":
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, entry.link
    else:
        info.type, info.mode, info.size = tarfile.REGTYPE, 0o755 if executable else 0o644, size
    return info


def pack(root: Path, limit: int | None = None, advance: Callable[[int], object] | None = None) -> Packed:
    """The workdir at ``root`` as tar.gz bytes; ``advance`` hears how many source bytes were packed."""
    root = root.resolve()
    if not root.is_dir():
        raise WorkdirError(
            f"the workdir {root} is not a folder",
            "fix workdir: in job.yaml (relative to the job file's folder), or use workdir: null",
        )
    entries = scan(root)
    buffer = _CappedBuffer(max_bytes() if limit is None else limit)
    try:
        with (
            gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for entry in entries:
                if entry.kind != "file":
                    tar.addfile(_tarinfo(entry))
                    continue
                with entry.source.open("rb") as f:
                    st = os.fstat(f.fileno())  # the size read is the size declared
                    tar.addfile(_tarinfo(entry, st.st_size, bool(st.st_mode & 0o111)), f)
                if advance:
                    advance(st.st_size)
    except _TooBig:
        raise _too_big(entries, buffer.limit) from None
    except OSError as exc:
        raise WorkdirError(
            f"packing the workdir failed: {exc}", "check the files are readable and not changing while you submit"
        ) from None
    data = buffer.getvalue()
    files = sum(1 for e in entries if e.kind == "file")
    return Packed(root, data, hashlib.sha256(data).hexdigest(), files, sum(e.size for e in entries))


def _too_big(entries: list[Entry], limit: int) -> WorkdirError:
    biggest = sorted((e for e in entries if e.kind == "file"), key=lambda e: (-e.size, e.name))[:5]
    listed = ", ".join(f"{e.name} ({output.size(e.size)})" for e in biggest)
    return WorkdirError(
        f"the packed workdir is over the {output.size(limit)} limit; biggest files: {listed}",
        f"{IGNORE_FIX}, or keep data outside the workdir and download it in setup: "
        "(COOP_MAX_WORKDIR_MB raises this check; the coordinator has its own limit)",
    )


def pack_with_progress(root: Path) -> Packed:
    """:func:`pack`, with a progress bar on stderr when the tree is big enough to wait for."""
    total = sum(e.size for e in scan(root)) if root.is_dir() else 0
    if total < SHOW_PROGRESS_BYTES:
        return pack(root)
    columns = (SpinnerColumn(), TextColumn("packing workdir"), BarColumn(), DownloadColumn())
    with Progress(*columns, console=output.stderr(), transient=True) as progress:
        task = progress.add_task("pack", total=total)
        return pack(root, advance=lambda n: progress.advance(task, n))


def upload(client: CoopClient, packed: Packed) -> bool:
    """Send the archive unless the coordinator has it already; True when bytes were sent."""
    if client.has_workdir(packed.sha256):
        return False
    if len(packed.data) < SHOW_PROGRESS_BYTES:
        client.upload_workdir(packed.sha256, packed.data)
    else:
        with output.stderr().status(f"uploading workdir ({output.size(len(packed.data))})"):
            client.upload_workdir(packed.sha256, packed.data)
    return True
