"""Job output, as files written by the backends under ``<data_dir>/logs/job-<id>/attempt-<n>.log``."""

from __future__ import annotations

import os
from pathlib import Path

from coop.schemas import TERMINAL_STATES, LogChunk
from coop.server.config import Settings
from coop.server.models import Job

MAX_CHUNK = 256 * 1024


def log_path(settings: Settings, job_id: int, attempt: int) -> Path:
    return settings.log_dir / f"job-{job_id}" / f"attempt-{attempt}.log"


def stored(settings: Settings, job_id: int, attempt: int) -> int:
    """How many bytes of the attempt's output are stored: where the next read from its backend starts."""
    try:
        return log_path(settings, job_id, attempt).stat().st_size
    except FileNotFoundError:
        return 0


def store(settings: Settings, job_id: int, attempt: int, offset: int, data: bytes) -> None:
    """Write ``data``, the output its backend gave from ``offset`` on, at ``offset`` of the attempt's
    log: in place, not appended, so that two savers racing with the same bytes (the log loop and the
    cycle that sees the attempt end) store them once."""
    if not data:
        return
    path = log_path(settings, job_id, attempt)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    finally:
        os.close(fd)


def read(settings: Settings, job: Job, attempt: int | None, offset: int) -> LogChunk:
    """A chunk of one attempt's log from ``offset`` (the latest attempt by default)."""
    assert job.id is not None
    number = attempt if attempt is not None else job.attempts
    data = b""
    if number > 0:
        path = log_path(settings, job.id, number)
        if path.is_file():
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read(MAX_CHUNK)
    finished = job.state in TERMINAL_STATES or (attempt is not None and attempt < job.attempts)
    return LogChunk(
        data=data.decode("utf-8", errors="replace"),
        offset=offset,
        next_offset=offset + len(data),
        eof=finished and len(data) < MAX_CHUNK,
    )
