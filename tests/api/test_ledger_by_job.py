"""``GET /v1/members/{name}/ledger/jobs`` (``coop balance --by-job``): a member's ledger summed per job
and kind, on SQLite and PostgreSQL; members see only their own."""

from __future__ import annotations

import pytest
from sqlmodel import Session

from coop.client import CoopError
from coop.server.models import LedgerEntry
from tests.api.helpers import job_spec
from tests.conftest import Coordinator


def test_slices_sum_per_job_and_kind(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    bob, _ = coordinator.new_member("bob")
    first = alice.submit(job_spec("first", gpus=0))["id"]
    second = alice.submit(job_spec("second", gpus=0))["id"]
    ids = {m["name"]: m["id"] for m in coordinator.admin.members()}
    coordinator.admin.grant("alice", 5, note="welcome")
    slices = [  # what the accrual writes every ledger interval: small slices per running job
        (ids["alice"], -0.25, "spend", first, 0.5),
        (ids["alice"], -0.25, "spend", first, 0.5),
        (ids["alice"], -0.125, "spend", second, 0.25),
        (ids["bob"], 0.25, "earn", first, 0.5),
        (ids["bob"], 0.25, "earn", first, 0.5),
        (ids["bob"], 0.125, "earn", second, 0.25),
        (ids["bob"], 0.03, "idle", None, 0.2),
    ]
    with Session(coordinator.engine) as session:
        for member_id, amount, kind, job_id, hours in slices:
            session.add(LedgerEntry(member_id=member_id, amount=amount, kind=kind, job_id=job_id, gpu_hours=hours))
        session.commit()

    rows = [
        (r["job_id"], r["job_name"], r["kind"], r["amount"], r["gpu_hours"], r["entries"])
        for r in alice.ledger_by_job("alice")
    ]
    assert rows == [
        (None, None, "grant", 5.0, 0.0, 1),
        (first, "first", "spend", pytest.approx(-0.5), pytest.approx(1.0), 2),
        (second, "second", "spend", pytest.approx(-0.125), pytest.approx(0.25), 1),
    ]
    donor = {(r["job_id"], r["kind"]): r["amount"] for r in coordinator.admin.ledger_by_job("bob")}
    assert donor == {
        (None, "idle"): pytest.approx(0.03),
        (first, "earn"): pytest.approx(0.5),
        (second, "earn"): pytest.approx(0.125),
    }
    # the sums match the balance
    assert sum(r["amount"] for r in alice.ledger_by_job("alice")) == pytest.approx(alice.balance("alice")["balance"])

    with pytest.raises(CoopError) as refused:
        bob.ledger_by_job("alice")
    assert refused.value.status == 403
