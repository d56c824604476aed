"""Job output, as files written by the backends under ``<data_dir>/logs/job-<id>/attempt-<n>.log``
(a gang's rank k > 0: ``attempt-<n>.rank-<k>.log``)."""

from __future__ import annotations

import os
from pathlib import Path

from coop.schemas import TERMINAL_STATES, LogChunk
from coop.server.config import Settings
from coop.server.models import Job
from coop.server.services.errors import Invalid

MAX_CHUNK = 256 * 1024


def log_path(settings: Settings, job_id: int, attempt: int, rank: int = 0) -> Path:
    name = f"attempt-{attempt}.log" if rank == 0 else f"attempt-{attempt}.rank-{rank}.log"
    return settings.log_dir / f"job-{job_id}" / name


def stored(settings: Settings, job_id: int, attempt: int, rank: int = 0) -> int:
    """How many bytes of the attempt's output are stored: where the next read from its backend starts."""
    try:
        return log_path(settings, job_id, attempt, rank).stat().st_size
    except FileNotFoundError:
        return 0


def store(settings: Settings, job_id: int, attempt: int, offset: int, data: bytes, rank: int = 0) -> None:
    """Write ``data``, the output its backend gave from ``offset`` on, at ``offset`` of the attempt's
    log: in place, not appended, so that two savers racing with the same bytes (the log loop and the
    cycle that sees the attempt end) store them once."""
    if not data:
        return
    path = log_path(settings, job_id, attempt, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    finally:
        os.close(fd)


def read(settings: Settings, job: Job, attempt: int | None, offset: int, rank: int = 0) -> LogChunk:
    """A chunk of one attempt's log from ``offset`` (the latest attempt by default; a gang's rank 0 by
    default)."""
    assert job.id is not None
    nodes = job.nodes
    if rank >= nodes:
        raise Invalid(
            f"job {job.id} runs on {nodes} node{'s' if nodes > 1 else ''}: it has no rank {rank}",
            field="rank",
            fix=f"ask for a rank from 0 to {nodes - 1}" if nodes > 1 else "leave --rank out: rank 0 is its only one",
        )
    number = attempt if attempt is not None else job.attempts
    data = b""
    if number > 0:
        path = log_path(settings, job.id, number, rank)
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
