"""Least attained service on the live coordinator: the cycle reads a running job's service from its
attempt and a waiting job's from its earlier attempts (the real cycle and ledger; the in-process
backend of tests/observability stands in for Ray, which is not what is under test here)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlmodel import Session

from coop.scheduler.preemption import SERVICE_MARK
from coop.server.models import utcnow
from coop.server.services import scheduling
from tests.api.helpers import job_spec, node
from tests.conftest import loopless_coordinator
from tests.observability.cooperative import InProcessBackend


def test_a_job_that_ran_hours_makes_way_for_a_new_one_and_is_counted_once(tmp_path: Path) -> None:
    with loopless_coordinator(tmp_path / "coop") as c:
        backend = InProcessBackend()
        c.new_member("alice")
        bob = c.new_member("bob")[0]
        c.agent("alice").register_node(node("n1", gpus=4))
        long = bob.submit(job_spec("long", 4))["id"]  # it writes no checkpoint: it makes way only early on

        def cycle(hours: float) -> None:
            with Session(c.engine, expire_on_commit=False) as session:
                scheduling.cycle(session, c.settings, backend, now=utcnow() + timedelta(hours=hours))

        cycle(0)
        cycle(0)
        assert c.admin.job(long)["state"] == "RUNNING"
        short = bob.submit(job_spec("short", 4))["id"]
        cycle(0.05)  # 3 minutes in: under the minimum run time, nothing is stopped
        assert c.admin.job(long)["state"] == "RUNNING" and c.admin.job(short)["state"] == "PENDING"
        cycle(0.35)  # 1.4 GPU-hours in (past the first level), 21 minutes of work lost: it is asked to stop
        for _ in range(3):  # the backend stops it and the room goes to the short job (now on the real clock)
            cycle(0)
        assert c.admin.job(long)["state"] == "PENDING"
        assert c.admin.job(short)["state"] in ("STARTING", "RUNNING")
        events = [e["reason"] for e in c.admin.job(long)["events"]]
        assert any(SERVICE_MARK in r and "bob's job" in r for r in events), events
        with Session(c.engine) as session:
            loaded = scheduling.load(session, c.settings, utcnow())
        view = next(j for j in loaded.snapshot.jobs if j.id == long)
        assert view.service_stops == 1 and view.attained_gpu_s > 0
