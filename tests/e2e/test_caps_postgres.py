"""On PostgreSQL, a flood of concurrent submissions never takes a member past its GPU cap."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlmodel import Session, col, select

from coop.server.db import make_engine
from coop.server.models import Attempt, Job
from tests.conftest import wait_for
from tests.e2e.conftest import Coop


def test_concurrent_submissions_respect_the_gpu_cap(coop_pg: Coop, tmp_path) -> None:  # type: ignore[no-untyped-def]
    coop = coop_pg
    coop.member("capped", gpu_cap=2)
    coop.add_node("wide", "donor", gpus=4)
    gate = tmp_path / "gate"
    with ThreadPoolExecutor(max_workers=8) as pool:
        jobs = list(pool.map(lambda i: coop.submit("capped", f"flood-{i}", gpus=1, env={"GATE": str(gate)}), range(8)))
    engine = make_engine(coop.settings.resolved_database_url)

    def held() -> int:
        with Session(engine) as session:
            rows = session.exec(
                select(Attempt.gpu_indices)
                .join(Job, col(Job.id) == Attempt.job_id)
                .where(col(Attempt.state).in_(("STARTING", "RUNNING")))
            ).all()
        return sum(len(r) for r in rows)

    wait_for(lambda: held() == 2, timeout=60, what="two jobs placed")

    def capped_reasons() -> bool:
        waiting = [coop.job(j["id"]) for j in jobs if coop.job(j["id"])["state"] == "PENDING"]
        return len(waiting) == 6 and all("GPU cap (2 of 2 in use)" in j["reason"] for j in waiting)

    wait_for(capped_reasons, timeout=10, what="the six others to wait on the cap")
    assert held() == 2
    peak = 0
    gate.write_text("go")

    def all_done() -> bool:
        nonlocal peak
        peak = max(peak, held())
        return all(coop.job(j["id"])["state"] == "SUCCEEDED" for j in jobs)

    wait_for(all_done, timeout=180, interval=0.1, what="all eight jobs")
    assert peak <= 2
    engine.dispose()
