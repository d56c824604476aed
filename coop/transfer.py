"""Moving a job's files to and from the coordinator's artifact store: resumable, verified, a chunk
at a time (never a whole file in memory). Used by each attempt's wrapper on the node (outputs and
checkpoints up, the last checkpoint down) and by ``coop pull`` (outputs down).

A transfer cut by a network blip, a coordinator restart or a killed process goes on from where it
stopped: an upload asks how far the coordinator got and sends the rest; a download keeps its bytes
in ``<file>.part`` and asks for the rest with a ``Range`` header. Every file is checked against its
SHA-256 before it counts.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from coop.client import CoopClient, CoopError

CHUNK = 8 << 20  # bytes per upload request
READ = 1 << 20  # bytes hashed or written at a time
ATTEMPTS = 8  # tries of one request through transient failures (connection lost, 5xx), backing off


@dataclass(frozen=True)
class Entry:
    path: str  # relative, with '/'
    size: int
    sha256: str


class Changing(Exception):
    """A file changed while it was hashed (a checkpoint being written): try again later."""


def sha256_of(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(READ):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest()


def already_there(target: Path, size: int, sha256: str) -> bool:
    """A file with these bytes is at ``target`` already: nothing to fetch."""
    return target.is_file() and target.stat().st_size == size and sha256_of(target) == sha256


def manifest(root: Path, known: dict[tuple[str, int, int, int], str] | None = None) -> list[Entry]:
    """Every regular file under ``root`` (symbolic links are not followed), with its hash. Raises
    ``Changing`` when a file changed while it was read: its bytes would not be one version of it.
    ``known``: hashes by (path, size, mtime, inode) from earlier calls, kept up to date: a checkpoint
    sync re-reads only the files written since the last one."""
    entries = []
    now: dict[tuple[str, int, int, int], str] = {}
    for path in sorted(_files(root)):
        before = path.stat()
        key = (str(path), before.st_size, before.st_mtime_ns, before.st_ino)
        sha = known.get(key) if known is not None else None
        if sha is None:
            sha = sha256_of(path)
            after = path.stat()
            if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
                raise Changing(f"{path} changed while it was read")
        now[key] = sha
        entries.append(Entry(path.relative_to(root).as_posix(), before.st_size, sha))
    if known is not None:  # only the files there now: the cache never outgrows the folder
        known.clear()
        known.update(now)
    return entries


def fingerprint(root: Path) -> tuple[tuple[str, int, int], ...]:
    """Cheap: names, sizes and times. A folder whose fingerprint is unchanged need not be sent again."""
    found = []
    for path in _files(root):
        with _gone_ok():
            st = path.stat()
            found.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return tuple(sorted(found))


def _files(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        return
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in names:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                yield path


class _gone_ok:
    """A file removed while a folder is walked is simply not there."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        return isinstance(exc, FileNotFoundError)


def retrying(call: Callable[[], Any], what: str, say: Callable[[str], None] | None = None) -> Any:
    """``call()`` through transient failures: no answer, or a 5xx (a coordinator restarting)."""
    delay = 0.5
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return call()
        except CoopError as exc:
            transient = exc.status is None or exc.status >= 500
            if not transient or attempt == ATTEMPTS:
                raise
            if say is not None:
                say(f"{what}: {exc.message}; trying again in {delay:.1f} s")
        time.sleep(delay)  # a backoff between tries, not a wait for something to happen
        delay = min(30.0, delay * 2)
    raise AssertionError("unreachable")


# --- the wrapper's side: one attempt's credential -------------------------------------------------


class Sender:
    """An attempt's transfers, with its own credential (``/v1/transfer``): nothing else of the store."""

    def __init__(
        self,
        url: str,
        token: str,
        say: Callable[[str], None] | None = None,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.client = CoopClient(url, token, timeout=timeout, transport=transport, verify=verify)
        self.say = say or (lambda _: None)
        self.sent_bytes = 0  # blob bytes this sender uploaded (a resumed upload sends only the rest)
        self.hashed: dict[tuple[str, int, int, int], str] = {}  # see ``manifest``

    def close(self) -> None:
        self.client.close()

    def plan(self) -> dict[str, Any]:
        return retrying(lambda: self.client.request("GET", "/transfer/plan"), "asking what to restore", self.say)  # type: ignore[no-any-return]

    def send(self, root: Path, kind: str) -> dict[str, Any] | None:
        """Send the folder as one set (``output`` or ``checkpoint``); None when it holds no file: an
        empty folder costs nothing. Only blobs the coordinator does not hold for this member go."""
        entries = manifest(root, self.hashed)
        if not entries:
            return None
        body = {"kind": kind, "files": [e.__dict__ for e in entries]}
        begun = retrying(lambda: self.client.request("POST", "/transfer/sets", json=body), f"starting the {kind}")
        where = {e.sha256: root / e.path for e in entries}
        for sha in begun["needed"]:
            self._upload(begun["set_id"], sha, where[sha])
        path = f"/transfer/sets/{begun['set_id']}/commit"
        return retrying(lambda: self.client.request("POST", path), f"completing the {kind}", self.say)  # type: ignore[no-any-return]

    def _upload(self, set_id: int, sha: str, path: Path) -> None:
        url = f"/transfer/sets/{set_id}/blobs/{sha}"
        size = path.stat().st_size
        received = retrying(lambda: self.client.request("GET", url), "asking how far", self.say)["received"]
        with open(path, "rb") as f:
            while received < size:
                f.seek(received)
                data = f.read(CHUNK)
                try:
                    received = self.client.request("PATCH", url, params={"offset": received}, content=data)["received"]
                    self.sent_bytes += len(data)
                except CoopError as exc:
                    if exc.status is not None and exc.status < 500 and exc.status != 409:
                        raise
                    # lost, or not where we thought (409: another sender of the same blob): ask, go on from there
                    self.say(f"sending {path.name}: {exc.message}; resuming")
                    received = retrying(lambda: self.client.request("GET", url), "asking how far", self.say)["received"]
        retrying(lambda: self.client.request("POST", f"{url}/finish"), f"checking {path.name}", self.say)

    def restore(self, checkpoint: dict[str, Any], dest: Path) -> int:
        """Put the checkpoint set's files under ``dest`` (those already there, same bytes, are kept);
        returns how many bytes were fetched."""
        fetched = 0
        for item in checkpoint["items"]:
            target = dest / item["path"]
            if already_there(target, item["size"], item["sha256"]):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            fetched += download(self.client, f"/transfer/blobs/{item['sha256']}", target, item["size"], item["sha256"])
        return fetched


# --- downloads ------------------------------------------------------------------------------------


def download(
    client: CoopClient,
    path: str,
    dest: Path,
    size: int,
    sha256: str,
    progress: Callable[[int], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> int:
    """Fetch ``path`` (an API path) into ``dest``, resuming ``dest.part`` if a run before was cut;
    checks the SHA-256 before ``dest`` appears. Returns the bytes fetched by this call."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > size:  # not this file's: start again
        part.unlink()
        have = 0
    digest = hashlib.sha256()
    if have:  # what an earlier run fetched is hashed once, the rest as it arrives
        with open(part, "rb") as f:
            while chunk := f.read(READ):
                digest.update(chunk)
        if progress is not None:
            progress(have)
    fetched = 0
    tries = 0
    while have < size:
        try:
            with client.stream(path, start=have) as chunks, open(part, "ab") as out:
                for chunk in chunks:
                    out.write(chunk)
                    digest.update(chunk)
                    have += len(chunk)
                    fetched += len(chunk)
                    if progress is not None:
                        progress(len(chunk))
        except CoopError as exc:
            tries += 1
            if (exc.status is not None and exc.status < 500) or tries >= ATTEMPTS:
                raise
            if say is not None:
                say(f"fetching {dest.name}: {exc.message}; resuming at byte {have}")
            time.sleep(min(30.0, 0.5 * 2**tries))  # backoff before the next try
    part.touch()
    if have != size or digest.hexdigest() != sha256:
        part.unlink()
        raise CoopError(f"{dest} did not arrive whole (its SHA-256 is not {sha256}); run the command again")
    os.replace(part, dest)
    return fetched
