"""What the scheduler pays each cycle to read fair-share usage and balances from a large ledger.

The ledger grows by a few rows per running job every ledger interval (about 580k rows a day with
100 jobs running at the default 30 s), so summing it whole each cycle does not last. Prints, on a
ledger of --rows entries: the full GROUP BY sum the API uses (``accounts.balances``), the first
``LedgerTally`` read (a coordinator start), and a steady-state read after one ledger interval's new
rows. Figures only.

    python bench/ledger_reads.py [--rows 500000] [--members 50] [--database-url URL]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, insert
from sqlmodel import Session

from coop.server.db import make_engine, upgrade
from coop.server.models import LedgerEntry, Member, utcnow
from coop.server.services import accounts
from coop.server.services.ledger import LedgerTally

KINDS = ("spend", "earn", "own", "idle")


def timed(fn: Callable[[], object], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--interval-rows", type=int, default=200, help="rows one ledger interval adds")
    parser.add_argument("--database-url", help="default: a fresh SQLite file (WAL, as the coordinator runs it)")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="coop-ledger-bench-")
    engine = make_engine(args.database_url or f"sqlite:///{Path(folder) / 'coop.db'}")
    upgrade(engine)
    rng = random.Random(1)
    start = utcnow() - timedelta(days=30)
    with Session(engine) as session:
        session.exec(delete(LedgerEntry))  # type: ignore[call-overload]
        session.exec(delete(Member))  # type: ignore[call-overload]
        ids = []
        for i in range(args.members):
            member = Member(name=f"bench-{i}")
            session.add(member)
            session.flush()
            ids.append(member.id)
        session.commit()

    def rows(n: int, offset_s: float) -> list[dict[str, object]]:
        return [
            {"member_id": rng.choice(ids), "amount": rng.uniform(-1, 1), "kind": rng.choice(KINDS),
             "at": start + timedelta(seconds=offset_s + i), "gpu_hours": 0.0, "note": ""}
            for i in range(n)
        ]  # fmt: skip

    started = time.perf_counter()
    with Session(engine) as session:
        for at in range(0, args.rows, 50_000):
            session.exec(insert(LedgerEntry), params=rows(min(50_000, args.rows - at), at))  # type: ignore[call-overload]
        session.exec(insert(LedgerEntry), params=[{**r, "kind": "grant"} for r in rows(args.members, 0)])  # type: ignore[call-overload]
        session.commit()
    print(f"ledger: {args.rows:,} entries for {args.members} members on {engine.dialect.name} "
          f"(written in {time.perf_counter() - started:.1f} s)")  # fmt: skip
    with Session(engine) as session:
        full = timed(lambda: accounts.balances(session))
        print(f"full sum (accounts.balances, what the API reads): {full * 1000:.1f} ms")
        tally = LedgerTally(168.0)
        cold = timed(lambda: tally.read(session), runs=1)
        print(f"LedgerTally first read (a coordinator start): {cold * 1000:.1f} ms")
    warm = []
    for step in range(5):
        with Session(engine) as session:
            session.exec(insert(LedgerEntry), params=rows(args.interval_rows, args.rows + step * 30))  # type: ignore[call-overload]
            session.commit()
        with Session(engine) as session:
            warm.append(timed(lambda: tally.read(session), runs=1))
            kept, summed = tally.read(session).balances, accounts.balances(session)
    drift = max(abs(kept.get(m, 0.0) - v) for m, v in summed.items())
    print(f"LedgerTally read after {args.interval_rows} new rows (each scheduler cycle): "
          f"{statistics.median(warm) * 1000:.2f} ms (median of {len(warm)}); "
          f"largest difference from the full sum: {drift:.1e} credits")  # fmt: skip


if __name__ == "__main__":
    main()
