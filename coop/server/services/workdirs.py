"""Packed workdirs (tar.gz), stored once by content hash under the data dir."""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from coop.server.config import Settings
from coop.server.errors import ApiError


def path_of(settings: Settings, sha256: str) -> Path:
    return settings.workdir_dir / f"{sha256}.tar.gz"


def exists(settings: Settings, sha256: str) -> bool:
    return path_of(settings, sha256).is_file()


def _too_large(settings: Settings) -> ApiError:
    return ApiError(
        413,
        "too_large",
        f"the packed workdir exceeds {settings.max_workdir_mb:g} MB",
        field="workdir",
        fix="leave data and checkpoints out of the workdir (add them to .coopignore) "
        "or ask the admin to raise COOP_MAX_WORKDIR_MB",
    )


def check_archive(path: Path) -> None:
    """Refuse anything but a gzip tar whose members stay inside the workdir."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar.getmembers():
                name = member.name
                if (
                    name.startswith("/")
                    or ".." in Path(name).parts
                    or member.issym()
                    and (member.linkname.startswith("/") or ".." in Path(member.linkname).parts)
                ):
                    raise ApiError(
                        422,
                        "invalid_workdir",
                        f"archive member {name!r} points outside the workdir",
                        field="workdir",
                        fix="pack the workdir with 'coop submit', which keeps paths relative",
                    )
                if member.isdev() or member.islnk() and ".." in Path(member.linkname).parts:
                    raise ApiError(
                        422,
                        "invalid_workdir",
                        f"archive member {name!r} is not a regular file",
                        field="workdir",
                        fix="leave devices and hard links out of the workdir",
                    )
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ApiError(
            422,
            "invalid_workdir",
            f"the workdir is not a readable .tar.gz ({exc})",
            field="workdir",
            fix="upload the archive 'coop submit' packs (gzip-compressed tar)",
        ) from None


async def store(settings: Settings, sha256: str, declared_size: int | None, chunks: AsyncIterator[bytes]) -> int:
    """Stream the upload to a temp file, verify size and hash, then move it into place atomically."""
    limit = settings.max_workdir_bytes
    if declared_size is not None and declared_size > limit:
        raise _too_large(settings)
    settings.workdir_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(dir=settings.workdir_dir, suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise _too_large(settings)
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != sha256:
            raise ApiError(
                422,
                "hash_mismatch",
                "the uploaded bytes do not have the SHA-256 in the URL",
                field="sha256",
                fix="PUT the archive to /v1/workdirs/<sha256 of exactly those bytes>",
            )
        check_archive(tmp)
        tmp.replace(path_of(settings, sha256))
    finally:
        tmp.unlink(missing_ok=True)
    return size
