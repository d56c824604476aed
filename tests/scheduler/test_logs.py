"""Job output: copied by a loop of its own while an attempt runs, only past what is stored; completed,
once, by the cycle that sees the attempt end; one backend or attempt failing to give it holds up
nothing else (issue 14).

The coordinator is the real HTTP app on SQLite, the log loop and the scheduler cycles are the real
ones driven by the test; only the execution backend is played in-process (tests/observability), so
that a test can decide what an attempt has printed and when a read fails. The same with the real
backends: tests/slurm/test_submit_recovery.py (offsets over SSH), tests/scheduler/test_fault_isolation.py
(an unreachable Ray beside a Slurm pool), tests/e2e/test_short_jobs.py (Ray).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from coop.server.leader import Leadership
from coop.server.loops import LogShipLoop
from coop.server.models import Attempt, Job
from coop.server.services import logs, runs, scheduling
from tests.api.helpers import job_spec, node
from tests.conftest import Coordinator, loopless_coordinator
from tests.observability.cooperative import InProcessBackend


@pytest.fixture
def c(tmp_path: Path) -> Iterator[Coordinator]:
    with loopless_coordinator(tmp_path / "coop") as coordinator:
        yield coordinator


def cycle(c: Coordinator, backend: Any) -> None:
    with Session(c.engine, expire_on_commit=False) as session:
        scheduling.cycle(session, c.settings, backend)


def log_loop(c: Coordinator, backend: Any) -> LogShipLoop:
    return LogShipLoop(c.engine, c.settings, backend, Leadership(c.engine, c.settings.data_dir, c.settings.instance))


def donated_node(c: Coordinator) -> None:
    c.new_member("carol")
    c.agent("carol").register_node(node("box", gpus=2))


def running_job(c: Coordinator, backend: InProcessBackend, name: str, member: str = "alice") -> tuple[int, str]:
    """A job of ``member``'s that the in-process backend runs; returns (job id, backend ref)."""
    client = c.new_member(member)[0]
    job_id = int(client.submit(job_spec(name, 1))["id"])
    cycle(c, backend)
    cycle(c, backend)
    job = c.admin.job(job_id)
    assert job["state"] == "RUNNING", job
    return job_id, job["attempts_detail"][-1]["backend_ref"]


def stored(c: Coordinator, job_id: int, attempt: int = 1) -> bytes:
    path = logs.log_path(c.settings, job_id, attempt)
    return path.read_bytes() if path.exists() else b""


def test_running_output_is_copied_by_its_own_loop_and_only_what_is_new(c: Coordinator) -> None:
    backend = InProcessBackend()
    donated_node(c)
    job_id, ref = running_job(c, backend, "train")
    loop = log_loop(c, backend)

    backend.output[ref] = b"epoch 1\n"
    cycle(c, backend)
    assert backend.reads == []  # a scheduler cycle reads no logs of a running attempt
    loop.run(loops=1)
    assert c.admin.logs(job_id) == {"data": "epoch 1\n", "offset": 0, "next_offset": 8, "eof": False}

    backend.output[ref] += b"epoch 2\n"
    loop.run(loops=1)
    loop.run(loops=1)  # nothing new: nothing added
    assert stored(c, job_id) == b"epoch 1\nepoch 2\n"
    assert backend.reads == [(ref, 0), (ref, 8), (ref, 16)]  # each read asks only past what is stored
    assert c.admin.logs(job_id, offset=8)["data"] == "epoch 2\n"


def test_final_logs_are_complete_once_the_attempt_ends_and_stored_once(c: Coordinator) -> None:
    backend = InProcessBackend(read_limit=5)  # a read gives at most 5 bytes, as a pool's gives 4 MiB
    donated_node(c)
    job_id, ref = running_job(c, backend, "train")
    loop = log_loop(c, backend)
    backend.output[ref] = b"0123456789" * 3
    loop.run(loops=1)
    assert stored(c, job_id) == b"0123456789" * 2  # a pass reads a few chunks; the rest waits for the next
    assert len(backend.reads) == runs.LOG_READS_PER_SAVE

    backend.output[ref] += b"the last words\n"  # printed after the last pass, then the job ended
    backend.runs[ref] = "SUCCEEDED"
    cycle(c, backend)

    whole = backend.output[ref]
    done = c.admin.job(job_id)
    assert done["state"] == "SUCCEEDED"
    assert stored(c, job_id) == whole  # complete before the job shows as ended
    assert c.admin.logs(job_id) == {"data": whole.decode(), "offset": 0, "next_offset": len(whole), "eof": True}
    reads = len(backend.reads)
    loop.run(loops=1)  # the attempt is no longer running: the loop leaves it alone
    cycle(c, backend)
    assert len(backend.reads) == reads and stored(c, job_id) == whole

    # a pass that read before the end and writes after it: the same bytes at the same place, never twice
    logs.store(c.settings, job_id, 1, 10, whole[10:20])
    with Session(c.engine) as session:
        job = session.get(Job, job_id)
        attempt = session.exec(select(Attempt).where(Attempt.job_id == job_id)).one()
        assert job is not None
        assert runs.save_logs(c.settings, backend, job, attempt) == 0
    assert stored(c, job_id) == whole


def test_an_attempt_whose_logs_cannot_be_read_holds_up_nothing_else(
    c: Coordinator, caplog: pytest.LogCaptureFixture
) -> None:
    backend = InProcessBackend()
    donated_node(c)
    broken, broken_ref = running_job(c, backend, "broken", "alice")
    fine, fine_ref = running_job(c, backend, "fine", "bob")
    backend.output = {broken_ref: b"lost\n", fine_ref: b"kept\n"}
    backend.log_errors[broken_ref] = RuntimeError("Ray has no log for it")
    loop = log_loop(c, backend)

    with caplog.at_level(logging.WARNING, logger="coop.loops"):
        loop.run(loops=1)
        backend.output[fine_ref] += b"more\n"
        loop.run(loops=1)

    assert stored(c, fine) == b"kept\nmore\n"  # read before and after the failing one, both passes
    assert stored(c, broken) == b""
    assert "Ray has no log for it" in loop.failing[broken_ref]
    warned = [r for r in caplog.records if r.name == "coop.loops" and broken_ref in r.getMessage()]
    assert len(warned) == 1  # once while it fails, not every pass

    # the cycle goes on: it places, and the failing attempt's end is recorded all the same
    late = c.new_member("dave")[0].submit(job_spec("late", 0))["id"]
    backend.runs[broken_ref] = "SUCCEEDED"
    cycle(c, backend)
    assert c.admin.job(broken)["state"] == "SUCCEEDED"
    assert c.admin.job(late)["state"] in ("STARTING", "RUNNING")
    assert c.admin.job(fine)["state"] == "RUNNING"

    # it reads again: the loop forgets the failure (a running attempt's logs are then caught up)
    del backend.log_errors[broken_ref]
    loop.run(loops=1)
    assert broken_ref not in loop.failing
