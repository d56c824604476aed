"""Idle credit: a donor earns for idle lendable GPUs, and nothing for the time its node was offline."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, select

from coop.server.models import LedgerEntry, Node, utcnow
from coop.server.services import ledger, nodes
from tests.api.helpers import node
from tests.conftest import loopless_coordinator


def test_idle_credit_stops_while_the_node_is_offline(tmp_path: Path) -> None:
    with loopless_coordinator(tmp_path / "coop") as c:
        c.new_member("alice")
        node_id = c.agent("alice").register_node(node("idle-box", gpus=2))["id"]  # 165 TFLOP/s per GPU
        rate, start = c.settings.idle_credit_rate, utcnow()
        per_hour = rate * 2 * 165 / 100  # one credit = an hour of 100 TFLOP/s

        def accrue(hours: float) -> float:
            with Session(c.engine) as session:
                ledger.accrue(session, rate, start + timedelta(hours=hours))
                entries = session.exec(select(LedgerEntry).where(LedgerEntry.kind == "idle")).all()
                return entries[-1].amount

        assert accrue(1) == pytest.approx(per_hour, rel=0.01)  # from registration: about an hour
        with Session(c.engine) as session:
            box = session.get(Node, node_id)
            assert box is not None
            nodes.mark_offline(session, box)
        assert accrue(3) == 0.0  # two hours offline earn nothing
        with Session(c.engine) as session:
            box = session.get(Node, node_id)
            assert box is not None
            box.state = "online"  # what its next heartbeat does
            session.add(box)
            session.commit()
        assert accrue(4) == pytest.approx(per_hour)  # only the hour since it came back
        assert c.admin.balance("alice")["balance"] == pytest.approx(2 * per_hour, rel=0.01)
