"""Fair-share usage kept between scheduler cycles equals usage summed from the whole ledger."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session

from coop.server.models import LedgerEntry, utcnow
from coop.server.services.ledger import UsageTally
from tests.conftest import loopless_coordinator

HALF_LIFE_H = 168.0


def test_running_totals_match_a_full_reading_and_decay_by_the_half_life(tmp_path: Path) -> None:
    with loopless_coordinator(tmp_path / "coop") as c:
        ids = {name: c.admin.create_member(name)["id"] for name in ("lab-a", "lab-b")}
        start = utcnow()

        def write(*entries: tuple[str, float, str, float]) -> None:  # (member, amount, kind, hours after start)
            with Session(c.engine) as session:  # test set-up: the ledger loop writes these in the coordinator
                for member, amount, kind, hours in entries:
                    at = start + timedelta(hours=hours)
                    session.add(LedgerEntry(member_id=ids[member], amount=amount, kind=kind, at=at))
                session.commit()

        def read(tally: UsageTally, hours: float) -> dict[int, float]:
            with Session(c.engine) as session:
                return tally.read(session, start + timedelta(hours=hours))

        kept = UsageTally(HALF_LIFE_H)
        write(("lab-a", -1.0, "spend", 0), ("lab-b", 2.0, "earn", 0), ("lab-b", 0.0, "own", 0))
        assert read(kept, 0) == pytest.approx({ids["lab-a"]: 1.0, ids["lab-b"]: 0.0})
        assert read(kept, HALF_LIFE_H)[ids["lab-a"]] == pytest.approx(0.5)  # a half-life later: half
        write(("lab-b", -3.0, "spend", 200), ("lab-a", 50.0, "grant", 200), ("lab-a", -0.5, "spend", 250))
        for hours in (250, 400, 1000):
            assert read(kept, hours) == pytest.approx(read(UsageTally(HALF_LIFE_H), hours))
        assert read(kept, 1000)[ids["lab-b"]] == pytest.approx(3.0 * 0.5 ** (800 / HALF_LIFE_H))
