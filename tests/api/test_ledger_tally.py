"""Usage and balances kept between scheduler cycles equal what the whole ledger sums to."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session

from coop.server.models import LedgerEntry, utcnow
from coop.server.services import accounts
from coop.server.services.ledger import LedgerTally, Totals
from tests.conftest import loopless_coordinator

HALF_LIFE_H = 168.0


def test_running_totals_match_a_full_reading_and_decay_by_the_half_life(tmp_path: Path) -> None:
    with loopless_coordinator(tmp_path / "coop") as c:
        ids = {name: c.admin.create_member(name)["id"] for name in ("lab-a", "lab-b")}
        start = utcnow()

        def write(*entries: tuple[str, float, str, float], entry_id: int | None = None) -> None:
            """(member, amount, kind, hours after start); the ledger loop writes these in the coordinator."""
            with Session(c.engine) as session:
                for member, amount, kind, hours in entries:
                    at = start + timedelta(hours=hours)
                    session.add(LedgerEntry(id=entry_id, member_id=ids[member], amount=amount, kind=kind, at=at))
                session.commit()

        def read(tally: LedgerTally, hours: float) -> Totals:
            with Session(c.engine) as session:
                return tally.read(session, start + timedelta(hours=hours))

        def full_sums() -> dict[int, float]:
            with Session(c.engine) as session:
                return accounts.balances(session)

        kept = LedgerTally(HALF_LIFE_H)
        write(("lab-a", -1.0, "spend", 0), ("lab-b", 2.0, "earn", 0), ("lab-b", 0.0, "own", 0))
        assert read(kept, 0).usage == pytest.approx({ids["lab-a"]: 1.0, ids["lab-b"]: 0.0})
        assert read(kept, HALF_LIFE_H).usage[ids["lab-a"]] == pytest.approx(0.5)  # a half-life later: half
        write(("lab-b", -3.0, "spend", 200), ("lab-a", 50.0, "grant", 200), ("lab-a", -0.5, "spend", 250))
        write(("lab-b", 0.75, "idle", 260))
        for hours in (250, 400, 1000):
            totals, fresh = read(kept, hours), read(LedgerTally(HALF_LIFE_H), hours)
            assert totals.usage == pytest.approx(fresh.usage)
            assert totals.balances == pytest.approx(fresh.balances)
            assert totals.balances == pytest.approx(full_sums())
        assert read(kept, 1000).usage[ids["lab-b"]] == pytest.approx(3.0 * 0.5 ** (800 / HALF_LIFE_H))
        assert read(kept, 1000).balances == pytest.approx({ids["lab-a"]: 48.5, ids["lab-b"]: -0.25})


def test_a_grant_committed_out_of_id_order_still_counts(tmp_path: Path) -> None:
    """On PostgreSQL an API worker's grant can take an id below rows the leader's accrual committed
    first; the tally has read past that id by the time the grant appears."""
    with loopless_coordinator(tmp_path / "coop") as c:
        member = c.admin.create_member("lab-a")["id"]
        with Session(c.engine) as session:
            session.add(LedgerEntry(id=10, member_id=member, amount=-2.0, kind="spend"))
            session.commit()
        tally = LedgerTally(HALF_LIFE_H)
        with Session(c.engine) as session:
            assert tally.read(session).balances == pytest.approx({member: -2.0})
            session.add(LedgerEntry(id=5, member_id=member, amount=30.0, kind="grant"))  # the late commit
            session.commit()
        with Session(c.engine) as session:
            balances = tally.read(session).balances
            assert balances == pytest.approx({member: 28.0})
            assert balances == pytest.approx(accounts.balances(session))
