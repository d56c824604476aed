"""The notes the accrual writes name members as users know them (``coop balance --raw`` shows them)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlmodel import Session

from coop.server.models import utcnow
from coop.server.services import ledger, scheduling
from tests.api.helpers import job_spec, node
from tests.conftest import loopless_coordinator
from tests.observability.cooperative import InProcessBackend


def test_a_donors_earnings_name_the_member_whose_job_ran(tmp_path: Path) -> None:
    with loopless_coordinator(tmp_path / "coop") as c:
        alice = c.new_member("alice")[0]
        bob = c.new_member("bob")[0]
        c.agent("alice").register_node(node("box", gpus=1))
        job = bob.submit(job_spec("guest", 1))["id"]
        backend = InProcessBackend()
        with Session(c.engine, expire_on_commit=False) as session:
            scheduling.cycle(session, c.settings, backend)  # placed
            scheduling.cycle(session, c.settings, backend)  # seen running
            ledger.accrue(session, c.settings.idle_credit_rate, utcnow() + timedelta(minutes=10))
        notes = {e["kind"]: e["note"] for e in alice.balance("alice", history=True)["history"] if e["kind"] != "idle"}
        assert notes == {"earn": f"job {job} of bob"}, notes
        spent = {e["kind"]: e["note"] for e in bob.balance("bob", history=True)["history"]}
        assert spent == {"spend": f"job {job} on box"}, spent
