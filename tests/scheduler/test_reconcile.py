"""Reconciling runs in a loop of its own, beside the scheduler's: it must not resubmit an attempt the
scheduler is launching at that moment, must resubmit one a dead coordinator committed but never
submitted, and wakes the scheduler when an attempt ends. The real services and ledger; the backend is
the in-process stand-in of tests/observability (Ray is not what is under test here)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlmodel import Session, select

from coop.server.leader import Leadership
from coop.server.loops import ReconcileLoop, SchedulerLoop
from coop.server.models import Attempt, Job
from coop.server.services import attempts, scheduling
from coop.states import AttemptState, JobState
from tests.api.helpers import job_spec, node
from tests.conftest import Coordinator, loopless_coordinator
from tests.observability.cooperative import InProcessBackend


@contextmanager
def one_job_one_node(tmp_path: Path) -> Iterator[tuple[Coordinator, InProcessBackend, int, int]]:
    """A coordinator without loops, alice's one-GPU node, and bob's job for it: (c, backend, node, job)."""
    with loopless_coordinator(tmp_path / "coop") as c:
        c.new_member("alice")
        researcher = c.new_member("bob")[0]
        node_id = c.agent("alice").register_node(node("n1", gpus=1))["id"]
        yield c, InProcessBackend(), node_id, researcher.submit(job_spec("j", 1))["id"]


def test_a_job_being_launched_is_left_to_its_launch_and_an_orphan_is_submitted(tmp_path: Path) -> None:
    with (
        one_job_one_node(tmp_path) as (c, backend, node_id, job_id),
        Session(c.engine, expire_on_commit=False) as session,
    ):
        job = session.get(Job, job_id)
        assert job is not None
        # what the scheduler has done between committing an attempt and submitting it
        attempt = attempts.start(session, job, node_id, [0], 1, "ray", c.settings.instance)
        ref = attempt.backend_ref
        scheduling.reconcile(session, c.settings, backend, launching={job_id})
        assert backend.runs == {}, "a launch in progress was submitted a second time"
        # the same attempt with nobody launching it: its coordinator died before submitting it
        passed = scheduling.reconcile(session, c.settings, backend)
        assert backend.runs == {ref: "RUNNING"}
        assert passed.starting and passed.ended == 0 and passed.down == {}


def test_an_attempt_that_ends_wakes_the_scheduler(tmp_path: Path) -> None:
    with one_job_one_node(tmp_path) as (c, backend, _, job_id):
        with Session(c.engine, expire_on_commit=False) as session:
            scheduling.cycle(session, c.settings, backend)
            scheduling.cycle(session, c.settings, backend)
            assert session.get(Job, job_id).state == JobState.RUNNING  # type: ignore[union-attr]
        woken: list[bool] = []
        leader = Leadership(c.engine, c.settings.data_dir, c.settings.instance)
        loop = ReconcileLoop(c.engine, c.settings, backend, leader, on_change=lambda: woken.append(True))
        loop.run(loops=1)
        assert woken == [], "nothing ended: nothing to place"
        (ref,) = backend.runs
        backend.runs[ref] = "SUCCEEDED"
        loop.run(loops=1)
        assert woken == [True]
        with Session(c.engine) as session:
            assert session.get(Job, job_id).state == JobState.SUCCEEDED  # type: ignore[union-attr]
            (attempt,) = session.exec(select(Attempt)).all()
            assert attempt.state == AttemptState.SUCCEEDED


def test_an_attempt_that_ends_wakes_the_ledger_so_its_cost_is_whole_at_once(tmp_path: Path) -> None:
    with one_job_one_node(tmp_path) as (c, backend, _, job_id):
        with Session(c.engine, expire_on_commit=False) as session:
            scheduling.cycle(session, c.settings, backend)
            scheduling.cycle(session, c.settings, backend)
        ledger_woken: list[bool] = []
        leader = Leadership(c.engine, c.settings.data_dir, c.settings.instance)
        scheduler = SchedulerLoop(
            c.engine, c.settings, backend, leader, on_attempt_end=lambda: ledger_woken.append(True)
        )
        scheduler.reconciler.run(loops=1)
        assert ledger_woken == []
        (ref,) = backend.runs
        backend.runs[ref] = "SUCCEEDED"
        scheduler.reconciler.run(loops=1)
        assert ledger_woken == [True]
