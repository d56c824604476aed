"""The room a preemption makes goes to the job it was made for, not to whoever comes first.

Pure: ``place(..., reserved=...)``. Live: the scheduler service remembers the job on the victim's
attempt and hands it to ``place`` as a reservation (the real cycle and ledger; the backend is the
in-process stand-in of tests/observability, since Ray is not what is under test here).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlmodel import Session

from coop.scheduler.model import Policy
from coop.scheduler.placement import place
from coop.server.models import utcnow
from coop.server.services import ledger, scheduling
from tests.api.helpers import job_spec, node
from tests.conftest import loopless_coordinator
from tests.observability.cooperative import InProcessBackend
from tests.scheduler import NOW, job, member
from tests.scheduler import node as node_view


def test_a_reserved_job_takes_its_room_before_the_fair_share_order() -> None:
    nodes = [node_view(1, "RTX4090"), node_view(2, "RTX3060")]
    members = [member(1, usage=0.0), member(2, usage=50.0)]
    jobs = [job(10, member_id=1), job(20, member_id=2)]
    assert {p.job_id: p.node_id for p in place(jobs, nodes, members, Policy(), NOW).placements} == {10: 2, 20: 1}
    reserved = place(jobs, nodes, members, Policy(), NOW, reserved={20: 2})
    assert {p.job_id: p.node_id for p in reserved.placements} == {20: 2, 10: 1}
    # a reservation that does not fit (yet) changes nothing
    busy = [node_view(1, "RTX4090"), node_view(2, "RTX3060", busy=(0,))]
    assert (
        place(jobs, busy, members, Policy(), NOW, reserved={20: 2}).placements
        == place(jobs, busy, members, Policy(), NOW).placements
    )


def test_a_reclaim_reserves_the_room_for_the_job_it_was_made_for(tmp_path: Path) -> None:
    with loopless_coordinator(tmp_path / "coop") as c:
        c.settings.reclaim_wait_s = 0
        c.settings.min_runtime_s = 0
        backend = InProcessBackend()

        def cycle() -> None:
            with Session(c.engine, expire_on_commit=False) as session:
                scheduling.cycle(session, c.settings, backend)

        c.new_member("alice")
        carol, bob, erin = (c.new_member(name)[0] for name in ("carol", "bob", "erin"))
        agent = c.agent("alice")
        first = agent.register_node(node("n1", gpus=1))["id"]
        agent.register_node(node("n2", gpus=1))
        c.admin.grant("bob", 100, "credit to reclaim with")
        c1 = carol.submit(job_spec("c1", 1))["id"]
        cycle()  # c1 goes on n1 (best fit, lowest id)
        b0 = bob.submit(job_spec("b0", 1))["id"]
        cycle()
        cycle()
        assert c.admin.job(c1)["attempts_detail"][0]["node_id"] == first
        assert c.admin.job(b0)["state"] == "RUNNING"
        with Session(c.engine) as session:  # an hour of use: carol in debt, bob still in credit
            ledger.accrue(session, c.settings.idle_credit_rate, utcnow() + timedelta(hours=1))
        b1 = bob.submit(job_spec("b1", 1))["id"]
        e1 = erin.submit(job_spec("e1", 1))["id"]  # erin holds nothing: fair share puts her before bob
        cycle()  # bob (in credit, waited) reclaims n1 from carol (in debt) for b1
        victim = c.admin.job(c1)["attempts_detail"][0]
        assert "reclaimed by bob" in (victim["reason"] or "")
        cycle()  # c1 stops and is requeued; the room goes to b1, not to erin, who comes first otherwise
        assert c.admin.job(c1)["attempts_detail"][0]["state"] == "PREEMPTED"
        assert [a["node_id"] for a in c.admin.job(b1)["attempts_detail"]] == [first]
        assert c.admin.job(e1)["state"] == "PENDING"
